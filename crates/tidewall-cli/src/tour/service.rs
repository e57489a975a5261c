//! The tour's service-level scenarios: a supervisor that restarts a crashing child and then,
//! nested in a parent, escalates when the restart intensity is exceeded; and a graceful
//! shutdown started by a real SIGTERM sent to this process.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidewall::rt::Signal;
use tidewall::task::{
    CancellationToken, Ending, Exit, TaskReport,
    shutdown::{Cause, Shutdown},
    supervisor::{ChildSpec, Supervisor, SupervisorEvent},
};

use super::bounded::{Bounded, missed, or_stop, secs, within};
use super::client::Net;
use super::report::{Section, ms};

/// How long the restarting supervisor may run: it is told to stop at 300 ms, after two
/// 20 ms crashes and their backoffs.
const RESTARTS_LIMIT: Duration = Duration::from_secs(30);
/// How long the escalation may take: the tree's six 20 ms crashes and their backoffs need
/// well under a second.
const ESCALATION_LIMIT: Duration = Duration::from_secs(30);
/// How long the SIGTERM may take to reach the coordinator: it is sent just before.
const SIGNAL_LIMIT: Duration = Duration::from_secs(10);
/// How long a supervisor or the coordinator may take to stop once told to (the coordinator's
/// own deadline is 2 s).
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// The two supervisor sections.
pub(crate) async fn supervisors<R: Net>(rt: R) -> Vec<Section> {
    vec![
        supervisor_restarts(&rt).await,
        supervisor_escalates(&rt).await,
    ]
}

/// The shutdown section. It must come last: it installs SIGINT and SIGTERM handlers, which
/// the runtime keeps for the life of the process, so Ctrl-C no longer ends it afterwards.
pub(crate) async fn shutdown<R: Net>(rt: R) -> Vec<Section> {
    vec![shutdown_on_signal(&rt).await]
}

type Timeline = Arc<Mutex<Vec<(Duration, SupervisorEvent)>>>;

/// An `on_event` hook that records each event with its time since `start`.
fn timeline<R: Net>(rt: &R) -> (Timeline, impl Fn(&SupervisorEvent) + Send + Sync + 'static) {
    let events: Timeline = Arc::default();
    let (sink, rt, start) = (Arc::clone(&events), rt.clone(), rt.now());
    (events, move |event: &SupervisorEvent| {
        let at = rt.now().saturating_duration_since(start);
        sink.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((at, event.clone()));
    })
}

fn describe(event: &SupervisorEvent) -> String {
    match event {
        SupervisorEvent::Started { child, run } => format!("{child}: started (run {run})"),
        SupervisorEvent::Exited { child, exit } => format!("{child}: exited {exit:?}"),
        SupervisorEvent::Restarting {
            child,
            delay,
            restarts_in_period,
        } => format!(
            "{child}: restart in {} (restart {restarts_in_period} in the period)",
            ms(*delay)
        ),
        SupervisorEvent::Stopped {
            child,
            exit,
            ending,
        } => format!("{child}: stopped ({exit:?}, {ending:?})"),
        SupervisorEvent::Escalating { child } => format!("{child}: intensity exceeded, escalating"),
        other => format!("{other:?}"),
    }
}

/// A child that fails `crashes` times, 20 ms into each run, then runs until told to stop.
fn crashing<R: Net>(rt: &R, name: &'static str, crashes: u32) -> (ChildSpec, Arc<AtomicU32>) {
    let runs = Arc::new(AtomicU32::new(0));
    let (rt, counter) = (rt.clone(), Arc::clone(&runs));
    let spec = ChildSpec::new(name, move |stop: CancellationToken| {
        let (rt, run) = (rt.clone(), counter.fetch_add(1, SeqCst));
        async move {
            if run < crashes {
                rt.sleep(Duration::from_millis(20)).await;
                return Err("lost the upstream connection");
            }
            stop.cancelled().await;
            Ok(())
        }
    });
    (spec, runs)
}

fn steady(name: &'static str) -> ChildSpec {
    ChildSpec::new(name, |stop: CancellationToken| async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    })
}

async fn supervisor_restarts<R: Net>(rt: &R) -> Section {
    let mut s = Section::new(
        "Tasks: supervisor restarting a crashing child",
        "Supervisor::builder().intensity(3, 1 s).child(ChildSpec::new(..))..build()?.run(stop)",
    );
    let (events, hook) = timeline(rt);
    let (ingest, runs) = crashing(rt, "ingest", 2);
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(3, Duration::from_secs(1))
        .seed(7)
        .on_event(hook)
        .child(ingest)
        .child(steady("api"))
        .build();
    let supervisor = match supervisor {
        Ok(supervisor) => supervisor,
        Err(error) => {
            s.check(&format!("the supervisor builds ({error})"), false);
            return s;
        }
    };
    let stop = CancellationToken::new();
    let (stopper, timer_rt) = (stop.clone(), rt.clone());
    let stopper = rt.spawn(async move {
        timer_rt.sleep(Duration::from_millis(300)).await;
        stopper.cancel("tour: stop the service");
    });
    let report = within(rt, RESTARTS_LIMIT, supervisor.run(stop)).await;
    let _ = stopper.await;
    let events = events
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (at, event) in events.iter() {
        s.metric(&format!("{:>9}", ms(*at)), describe(event));
    }
    let delays: Vec<Duration> = events
        .iter()
        .filter_map(|(_, e)| match e {
            SupervisorEvent::Restarting { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    let Some(report) = report else {
        return missed(
            s,
            "the supervisor, told to stop at 300 ms, stopped",
            RESTARTS_LIMIT,
        );
    };
    match report {
        Ok(report) => {
            let stop_order: Vec<&str> = report.stopped.iter().map(|r| &*r.name).collect();
            s.metric("restarts", report.restarts)
                .metric("stopped (in order)", stop_order.join(", "));
            s.check(
                "the crashing child was restarted twice, then stayed up (3 runs)",
                report.restarts == 2 && runs.load(SeqCst) == 3,
            );
            s.check(
                "restart delays follow the jittered backoff: in [5, 10] ms, then [10, 20] ms",
                delays.len() == 2
                    && (Duration::from_millis(5)..=Duration::from_millis(10)).contains(&delays[0])
                    && (Duration::from_millis(10)..=Duration::from_millis(20)).contains(&delays[1]),
            );
            s.check(
                "shutdown stopped the children in reverse start order: api, then ingest",
                stop_order == ["api", "ingest"]
                    && report.stopped.iter().all(|r| {
                        r.exit == Exit::Ok(()) && matches!(r.ending, Ending::Stopped { .. })
                    }),
            );
        }
        Err(escalation) => {
            s.check(
                &format!("the supervisor did not escalate ({escalation})"),
                false,
            );
        }
    }
    s
}

async fn supervisor_escalates<R: Net>(rt: &R) -> Section {
    let mut s = Section::new(
        "Tasks: supervisor escalating when the restart intensity is exceeded",
        "ChildSpec::supervisor(\"ingest-tree\", || inner.intensity(2, 1 s)); parent.intensity(1, 5 s)",
    );
    let (events, hook) = timeline(rt);
    let leaf_runs = Arc::new(AtomicU32::new(0));
    let (inner_rt, counter) = (rt.clone(), Arc::clone(&leaf_runs));
    let tree = ChildSpec::supervisor("ingest-tree", move || {
        let (rt, counter) = (inner_rt.clone(), Arc::clone(&counter));
        // Crashes 20 ms into every run, across every restart of the tree.
        let leaf = ChildSpec::new("ingest", move |_stop: CancellationToken| {
            counter.fetch_add(1, SeqCst);
            let rt = rt.clone();
            async move {
                rt.sleep(Duration::from_millis(20)).await;
                Err::<(), _>("lost the upstream connection")
            }
        });
        Supervisor::builder()
            .runtime(inner_rt.clone())
            .intensity(2, Duration::from_secs(1))
            .seed(11)
            .child(leaf)
            .build()
            .expect("a constant, valid configuration")
    });
    let root = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(1, Duration::from_secs(5))
        .seed(13)
        .on_event(hook)
        .child(steady("api"))
        .child(tree)
        .build();
    let root = match root {
        Ok(root) => root,
        Err(error) => {
            s.check(&format!("the supervisor builds ({error})"), false);
            return s;
        }
    };
    let started = rt.now();
    // A root whose intensity miscounts would restart the tree for ever: stopped at the limit,
    // it ends `Ok`, which fails the check below.
    let stop = CancellationToken::new();
    let outcome = or_stop(
        rt,
        (ESCALATION_LIMIT, STOP_LIMIT),
        &stop,
        "tour: the root did not escalate in time",
        root.run(stop.clone()),
    )
    .await;
    let took = rt.now().saturating_duration_since(started);
    let events = events
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (at, event) in events.iter() {
        s.metric(&format!("{:>9}", ms(*at)), describe(event));
    }
    s.metric("leaf runs", leaf_runs.load(SeqCst))
        .metric("root failed after", ms(took));
    let tree_failures = events
        .iter()
        .filter(|(_, e)| matches!(e, SupervisorEvent::Exited { child, exit: Exit::Err(_) } if &**child == "ingest-tree"))
        .count();
    let outcome = match outcome {
        Bounded::Ended(outcome) => outcome,
        Bounded::Stopped(outcome) => {
            s.check(
                &format!(
                    "the root escalated within {} (it had not: stopped it)",
                    secs(ESCALATION_LIMIT)
                ),
                false,
            );
            outcome
        }
        Bounded::Stuck => {
            s.check(
                &format!(
                    "the root escalated within {} (it had not, and did not stop within {} \
                     of being told to)",
                    secs(ESCALATION_LIMIT),
                    secs(STOP_LIMIT)
                ),
                false,
            );
            return s;
        }
    };
    match outcome {
        Ok(report) => {
            s.check(
                &format!("the root escalated (it ended {:?})", report.ended),
                false,
            );
        }
        Err(escalation) => {
            s.metric("escalation", &escalation);
            s.check(
                "the inner supervisor failed at its 3rd leaf crash (2 restarts allowed), twice",
                tree_failures == 2 && leaf_runs.load(SeqCst) == 6,
            );
            s.check(
                "the root restarted the tree once, then escalated on the second failure",
                &*escalation.child == "ingest-tree" && escalation.report.restarts == 1,
            );
            s.check(
                "before failing, the root stopped its remaining child (api) in time",
                matches!(escalation.report.stopped.as_slice(),
                    [TaskReport { name, ending: Ending::Stopped { .. }, .. }] if &**name == "api"),
            );
        }
    }
    s
}

/// Components registered in start order, with how long each needs to stop once told (`None`:
/// it ignores the request) and its own stop timeout.
const COMPONENTS: [(&str, Option<u64>, Option<u64>); 4] = [
    ("db-pool", Some(20), None),
    ("job-queue", Some(40), None),
    ("metrics-flusher", None, Some(50)),
    ("http", Some(30), None),
];
const DEADLINE: Duration = Duration::from_secs(2);

async fn shutdown_on_signal<R: Net>(rt: &R) -> Section {
    let mut s = Section::new(
        "Tasks: graceful shutdown on a real SIGTERM",
        "Shutdown::builder().deadline(2 s)..build()?; listen_for_signals()?; register(..); run()",
    );
    let mut shutdown = match Shutdown::builder()
        .runtime(rt.clone())
        .deadline(DEADLINE)
        .build()
    {
        Ok(shutdown) => shutdown,
        Err(error) => {
            s.check(&format!("the coordinator builds ({error})"), false);
            return s;
        }
    };
    if let Err(error) = shutdown.listen_for_signals() {
        s.check(&format!("signal handlers installed ({error})"), false);
        return s;
    }
    let told: Arc<Mutex<Vec<(&'static str, Instant)>>> = Arc::default();
    for (name, stop_takes, timeout) in COMPONENTS {
        let (rt, told) = (rt.clone(), Arc::clone(&told));
        let component = move |stop: CancellationToken| async move {
            match stop_takes {
                Some(took) => {
                    stop.cancelled().await;
                    told.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((name, rt.now()));
                    rt.sleep(Duration::from_millis(took)).await;
                }
                // Never looks at its token: only its timeout (and an abort) ends it.
                None => rt.sleep(Duration::from_secs(3600)).await,
            }
            Ok::<(), std::io::Error>(())
        };
        match timeout {
            Some(t) => shutdown.register_with_timeout(name, Duration::from_millis(t), component),
            None => shutdown.register(name, component),
        }
    }
    let sent = rt.now();
    if let Err(error) = send_sigterm_to_self() {
        if error.kind() == std::io::ErrorKind::Unsupported {
            s.not_measurable(
                "a graceful shutdown started by a SIGTERM sent to this process",
                &error.to_string(),
            );
        } else {
            s.check(&format!("SIGTERM sent to this process ({error})"), false);
        }
        return s;
    }
    // A signal that never reaches the coordinator would leave it waiting for a cause: at the
    // limit the tour triggers it instead, and the cause check below fails.
    let trigger = shutdown.trigger();
    let report = match or_stop(
        rt,
        (SIGNAL_LIMIT, STOP_LIMIT),
        &trigger,
        "tour: no signal reached the coordinator",
        shutdown.run(),
    )
    .await
    {
        Bounded::Ended(report) | Bounded::Stopped(report) => report,
        Bounded::Stuck => {
            s.check(
                &format!(
                    "the coordinator shut down within {} of the SIGTERM (it did not, nor \
                     within {} of being triggered)",
                    secs(SIGNAL_LIMIT),
                    secs(STOP_LIMIT)
                ),
                false,
            );
            return s;
        }
    };
    let received_after = report_start(&told, sent);
    s.metric(
        "signal sent",
        format!("SIGTERM to pid {}", std::process::id()),
    )
    .metric("cause", &report.cause)
    .metric("first component told after", ms(received_after));
    for component in &report.components {
        let end = match component.ending {
            Ending::Stopped { took } => {
                format!("stopped in {} ({:?})", ms(took), component.exit)
            }
            Ending::Aborted { took } => format!("aborted after {}", ms(took)),
            other => format!("{other:?} ({:?})", component.exit),
        };
        s.metric(&format!("  {}", component.name), end);
    }
    s.metric("shutdown took", ms(report.took))
        .metric("global deadline", ms(DEADLINE));
    let order: Vec<&str> = report.components.iter().map(|c| &*c.name).collect();
    let expected: Vec<&str> = COMPONENTS.iter().rev().map(|(name, ..)| *name).collect();
    s.check(
        &format!(
            "the cause is the SIGTERM this process received (waited up to {})",
            secs(SIGNAL_LIMIT)
        ),
        report.cause == Cause::Signal(Signal::Terminate),
    );
    s.check(
        "components stopped in reverse registration order: http, metrics-flusher, job-queue, db-pool",
        order == expected,
    );
    s.check(
        "the flusher that ignored its token was aborted at its own 50 ms timeout",
        report.components.iter().any(|c| {
            &*c.name == "metrics-flusher"
                && matches!(c.ending, Ending::Aborted { took } if took >= Duration::from_millis(50))
        }),
    );
    s.check(
        "every other component stopped in time, within the global deadline",
        report
            .components
            .iter()
            .filter(|c| &*c.name != "metrics-flusher")
            .all(|c| c.exit == Exit::Ok(()) && matches!(c.ending, Ending::Stopped { .. }))
            && !report.deadline_exceeded,
    );
    s
}

/// How long after `sent` the first component was told to stop.
fn report_start(told: &Mutex<Vec<(&'static str, Instant)>>, sent: Instant) -> Duration {
    told.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .first()
        .map_or(Duration::ZERO, |(_, at)| at.saturating_duration_since(sent))
}

/// A real signal, through the kernel, to this very process.
#[cfg(unix)]
fn send_sigterm_to_self() -> std::io::Result<()> {
    use rustix::process::{Signal, getpid, kill_process};
    kill_process(getpid(), Signal::TERM).map_err(std::io::Error::from)
}

#[cfg(not(unix))]
fn send_sigterm_to_self() -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "SIGTERM exists on Unix only",
    ))
}
