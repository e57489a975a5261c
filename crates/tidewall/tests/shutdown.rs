//! The shutdown coordinator: reverse order, per-component timeouts, the global deadline,
//! failing components, and real signals to the process, on every runtime.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidewall::ConfigError;
use tidewall::rt::Runtime;
use tidewall::task::{Cause, ComponentEnd, Exit, Shutdown, ShutdownReport, Stopped};
use tidewall::testing::Clocked;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn pairs(report: &ShutdownReport) -> Vec<(String, ComponentEnd)> {
    report
        .components
        .iter()
        .map(|c| (c.name.to_string(), c.end.clone()))
        .collect()
}

fn aborted(name: &str, took: u64) -> (String, ComponentEnd) {
    (
        name.to_owned(),
        ComponentEnd::Stopped(Stopped::Aborted { took: ms(took) }),
    )
}

fn stopped(name: &str, took: u64) -> (String, ComponentEnd) {
    (
        name.to_owned(),
        ComponentEnd::Stopped(Stopped::InTime {
            took: ms(took),
            exit: Exit::Normal,
        }),
    )
}

/// Registers a component that needs `stop_takes` ms after its token (None: ignores it), and
/// logs when it is told to stop.
fn component<R: Runtime>(
    shutdown: &mut Shutdown<Clocked<R>>,
    rt: &Clocked<R>,
    told: &Arc<Mutex<Vec<(&'static str, Duration)>>>,
    name: &'static str,
    stop_takes: Option<u64>,
    timeout: Option<u64>,
) {
    let (rt, told, start) = (rt.clone(), Arc::clone(told), rt.now());
    let body = move |stop: tidewall::task::CancellationToken| async move {
        match stop_takes {
            Some(took) => {
                stop.cancelled().await;
                told.lock().unwrap().push((name, rt.now() - start));
                rt.sleep(ms(took)).await;
            }
            None => rt.sleep(ms(1_000_000)).await,
        }
        Ok::<(), std::io::Error>(())
    };
    match timeout {
        Some(timeout) => shutdown.register_with_timeout(name, ms(timeout), body),
        None => shutdown.register(name, body),
    }
}

async fn global_deadline_aborts_the_rest<R: Runtime>(rt: Clocked<R>) {
    let told = Arc::default();
    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(ms(300))
        .build()
        .unwrap();
    component(&mut shutdown, &rt, &told, "a", Some(10), None);
    component(&mut shutdown, &rt, &told, "b", Some(100), None);
    component(&mut shutdown, &rt, &told, "stuck", None, None);
    component(&mut shutdown, &rt, &told, "d", Some(5), None);
    let start = rt.now();
    let report = shutdown.stop("deploy").await;
    assert_eq!(rt.now() - start, ms(300));
    assert_eq!(
        pairs(&report),
        [
            stopped("d", 5),
            aborted("stuck", 295),
            aborted("b", 0),
            aborted("a", 0),
        ]
    );
    assert!(report.deadline_exceeded && !report.is_clean() && !report.forced);
    assert_eq!(report.took, ms(300));
    assert!(matches!(&report.cause, Cause::Triggered(r) if r.as_str() == "deploy"));
    // b and a are past the deadline: their tokens are cancelled and they are aborted at once
    // (whether they see the token first is up to the executor).
    let told = told.lock().unwrap();
    assert_eq!(told[0], ("d", ms(0)));
    assert!(told.len() <= 3, "only d, b and a watch their tokens");
    assert!(told[1..].iter().all(|&(_, at)| at == ms(300)));
}

#[test]
fn the_global_deadline_aborts_whatever_is_left_on_every_runtime() {
    on_every_runtime!(global_deadline_aborts_the_rest);
}

async fn reverse_order_with_own_timeouts<R: Runtime>(rt: Clocked<R>) {
    let told = Arc::default();
    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(ms(1_000))
        .build()
        .unwrap();
    component(&mut shutdown, &rt, &told, "a", Some(10), None);
    component(&mut shutdown, &rt, &told, "b", Some(100), None);
    component(&mut shutdown, &rt, &told, "stuck", None, Some(50));
    component(&mut shutdown, &rt, &told, "d", Some(5), Some(1_000));
    let start = rt.now();
    let report = shutdown.stop("deploy").await;
    assert_eq!(
        pairs(&report),
        [
            stopped("d", 5),
            aborted("stuck", 50),
            stopped("b", 100),
            stopped("a", 10)
        ]
    );
    assert_eq!(rt.now() - start, ms(165));
    assert!(!report.deadline_exceeded);
    // Each was told only when the one after it was gone.
    assert_eq!(
        *told.lock().unwrap(),
        [("d", ms(0)), ("b", ms(55)), ("a", ms(155))]
    );
}

#[test]
fn components_stop_in_reverse_order_each_within_its_timeout_on_every_runtime() {
    on_every_runtime!(reverse_order_with_own_timeouts);
}

async fn a_failing_component_starts_the_shutdown<R: Runtime>(rt: Clocked<R>) {
    let told = Arc::default();
    let mut shutdown = Shutdown::builder().runtime(rt.clone()).build().unwrap();
    component(&mut shutdown, &rt, &told, "a", Some(1), None);
    let rt2 = rt.clone();
    shutdown.register("db", move |_stop| async move {
        rt2.sleep(ms(20)).await;
        Err::<(), _>("connection refused")
    });
    shutdown.register("once", |_stop| async { Ok::<(), std::io::Error>(()) });
    let report = shutdown.run().await;
    assert!(matches!(&report.cause,
        Cause::ComponentFailed { name, exit: Exit::Failed(message) }
            if &**name == "db" && message == "connection refused"));
    assert_eq!(
        pairs(&report),
        [
            ("once".to_owned(), ComponentEnd::Early(Exit::Normal)),
            (
                "db".to_owned(),
                ComponentEnd::Early(Exit::Failed("connection refused".into()))
            ),
            stopped("a", 1),
        ]
    );

    let mut shutdown = Shutdown::builder().runtime(rt.clone()).build().unwrap();
    shutdown.register("panics", |_stop| async {
        if true {
            panic!("bad state");
        }
        Ok::<(), std::io::Error>(())
    });
    let report = shutdown.run().await;
    assert!(matches!(&report.cause,
        Cause::ComponentFailed { exit: Exit::Panicked(m), .. } if m == "bad state"));
}

#[test]
fn a_failing_or_panicking_component_starts_the_shutdown_on_every_runtime() {
    on_every_runtime!(a_failing_component_starts_the_shutdown);
}

#[test]
fn bad_configuration_is_a_typed_error() {
    let zero = Shutdown::builder().deadline(Duration::ZERO).build();
    assert_eq!(zero.unwrap_err(), ConfigError::Zero { field: "deadline" });
}
