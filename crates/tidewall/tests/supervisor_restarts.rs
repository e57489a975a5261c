//! Supervisors restarting their children: restart kinds, the restart intensity and
//! escalation (nested supervisors too), restart backoff, contained panics, and the
//! builder's checks, on every runtime with virtual time. Strategies are in
//! supervisor_strategies.rs, stopping in supervisor_shutdown.rs.

mod common;
#[path = "common/supervisor.rs"]
mod supervisor;

use common::ms;
use supervisor::{cancelled_after, failing, fixed, recorder, starts, steady};

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use tidewall::ConfigError;
use tidewall::rt::{Clock, Runtime};
use tidewall::task::{
    CancellationToken, Ending, Exit, TaskReport,
    supervisor::{ChildSpec, Ended, Restart, Supervisor, SupervisorEvent},
};
use tidewall::testing::Clocked;
use tidewall::{Backoff, Jitter};

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
        [TaskReport { name, exit: Exit::Ok(()), ending: Ending::Stopped { took }, .. }]
            if &**name == "http" && *took == ms(0)
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
        SupervisorEvent::Exited { child, exit: Exit::Err(message) }
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
                exit: Exit::Err(message),
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

async fn exhausted_backoff_holds_its_last_delay<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = recorder(&rt);
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .intensity(5, ms(60_000))
        .backoff(
            Backoff::exponential(ms(10))
                .jitter(Jitter::None)
                .max_attempts(3)
                .max_delay(ms(500))
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
    // Two delays of the schedule (max_attempts 3 = 2 retries), then the last one held: a
    // crash loop never restarts fast again until a run is stable.
    assert_eq!(delays, [ms(10), ms(20), ms(20), ms(20), ms(20)]);
}

#[test]
fn a_backoff_that_runs_out_holds_its_last_delay_on_every_runtime() {
    on_every_runtime!(exhausted_backoff_holds_its_last_delay);
}
