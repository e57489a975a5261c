//! The shutdown coordinator: reverse order, per-component timeouts, the global deadline,
//! failing components, and real signals to the process, on every runtime.

mod common;

use common::ms;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidewall::ConfigError;
use tidewall::FutureExt as _;
use tidewall::rt::{Clock, Runtime};
use tidewall::task::{
    Ending, Exit,
    shutdown::{Cause, Shutdown, ShutdownReport},
};
use tidewall::testing::Clocked;

/// Each component's name, exit and ending, in the report's order.
fn ends_of(report: &ShutdownReport) -> Vec<(String, Exit, Ending)> {
    report
        .components
        .iter()
        .map(|c| (c.name.to_string(), c.exit.clone(), c.ending))
        .collect()
}

/// Aborted by the shutdown, `took` ms after it was told to stop.
fn aborted(name: &str, took: u64) -> (String, Exit, Ending) {
    (
        name.to_owned(),
        Exit::Aborted,
        Ending::Aborted { took: ms(took) },
    )
}

/// Returned `Ok` `took` ms after it was told to stop.
fn stopped(name: &str, took: u64) -> (String, Exit, Ending) {
    (
        name.to_owned(),
        Exit::Ok(()),
        Ending::Stopped { took: ms(took) },
    )
}

/// Ended on its own with `exit` before the shutdown began.
fn early(name: &str, exit: Exit) -> (String, Exit, Ending) {
    (name.to_owned(), exit, Ending::Finished)
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
        ends_of(&report),
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
        ends_of(&report),
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
        Cause::ComponentFailed { name, exit: Exit::Err(message) }
            if &**name == "db" && message == "connection refused"));
    assert_eq!(
        ends_of(&report),
        [
            early("once", Exit::Ok(())),
            early("db", Exit::Err("connection refused".into())),
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

/// Components that ended on their own (returned, failed, panicked) while nobody polled
/// `run` are `Finished`; one still running is stopped; one that ends on its own once the
/// shutdown has begun, before its turn, is `Stopped` with `took` zero.
async fn components_that_ended_before_the_shutdown_are_early<R: Runtime>(rt: Clocked<R>) {
    let told = Arc::default();
    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(ms(1_000))
        .build()
        .unwrap();
    let rt2 = rt.clone();
    shutdown.register("ends-during", move |_stop| async move {
        rt2.sleep(ms(1_005)).await;
        Ok::<(), std::io::Error>(())
    });
    shutdown.register("returned", |_stop| async { Ok::<(), std::io::Error>(()) });
    shutdown.register("failed", |_stop| async { Err::<(), _>("no config") });
    shutdown.register("panicked", |_stop| async {
        if true {
            panic!("bad state");
        }
        Ok::<(), std::io::Error>(())
    });
    component(&mut shutdown, &rt, &told, "server", Some(10), None);
    // Nobody polls `run` while they end.
    rt.sleep(ms(1_000)).await;
    let start = rt.now();
    let report = shutdown.stop("deploy").await;
    assert!(matches!(&report.cause, Cause::Triggered(r) if r.as_str() == "deploy"));
    assert_eq!(
        ends_of(&report),
        [
            stopped("server", 10),
            early("panicked", Exit::Panicked("bad state".into())),
            early("failed", Exit::Err("no config".into())),
            early("returned", Exit::Ok(())),
            stopped("ends-during", 0),
        ]
    );
    assert_eq!(rt.now() - start, ms(10));
    assert!(report.is_clean() && !report.deadline_exceeded);
    assert_eq!(*told.lock().unwrap(), [("server", ms(1_000))]);
}

#[test]
fn components_that_ended_before_the_shutdown_are_early_on_every_runtime() {
    on_every_runtime!(components_that_ended_before_the_shutdown_are_early);
}

/// The shutdown begins when the trigger is cancelled, not when `run` is first polled: a
/// component that ends on its own in between is `Stopped`, one that ended before is
/// `Finished`.
async fn the_trigger_marks_the_beginning_not_the_first_poll<R: Runtime>(rt: Clocked<R>) {
    let mut shutdown = Shutdown::builder().runtime(rt.clone()).build().unwrap();
    let (rt2, rt3) = (rt.clone(), rt.clone());
    shutdown.register("before", move |_stop| async move {
        rt2.sleep(ms(5)).await;
        Ok::<(), std::io::Error>(())
    });
    shutdown.register("after", move |_stop| async move {
        rt3.sleep(ms(15)).await;
        Ok::<(), std::io::Error>(())
    });
    rt.sleep(ms(10)).await;
    shutdown.trigger().cancel("maintenance");
    rt.sleep(ms(10)).await;
    let report = shutdown.run().await;
    assert!(matches!(&report.cause, Cause::Triggered(r) if r.as_str() == "maintenance"));
    assert_eq!(
        ends_of(&report),
        [stopped("after", 0), early("before", Exit::Ok(())),]
    );
    assert_eq!(report.took, ms(0));
}

#[test]
fn the_trigger_marks_the_beginning_of_the_shutdown_on_every_runtime() {
    on_every_runtime!(the_trigger_marks_the_beginning_not_the_first_poll);
}

/// Sets its flag when dropped (a component's future, aborted or finished).
struct FlagOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for FlagOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Dropping `stop`'s future mid-shutdown: the component being stopped goes on alone, the
/// ones not reached yet are told and aborted.
async fn dropping_the_shutdown_future_aborts_what_is_left<R: Runtime>(rt: Clocked<R>) {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let mut shutdown = Shutdown::builder().runtime(rt.clone()).build().unwrap();
    let (db_gone, http_done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut db_token = None;
    let gone = FlagOnDrop(Arc::clone(&db_gone));
    shutdown.register("db", |stop| {
        db_token = Some(stop);
        async move {
            let _gone = gone;
            std::future::pending::<()>().await;
            Ok::<(), std::io::Error>(())
        }
    });
    let (rt2, done) = (rt.clone(), Arc::clone(&http_done));
    shutdown.register("http", move |stop| async move {
        stop.cancelled().await;
        rt2.sleep(ms(100)).await;
        done.store(true, SeqCst);
        Ok::<(), std::io::Error>(())
    });
    let stopping = shutdown.stop("deploy").timeout_on(&rt, ms(10)).await;
    assert!(stopping.is_err(), "dropped while `http` drains");
    rt.sleep(ms(200)).await;
    let db_token = db_token.unwrap();
    assert_eq!(
        db_token.reason().unwrap().as_str(),
        "shutdown coordinator dropped"
    );
    assert!(db_gone.load(SeqCst), "`db` was aborted");
    assert!(
        !http_done.load(SeqCst),
        "`http`, dropped mid-drain with its coordinator, was aborted too"
    );
}

#[test]
fn dropping_the_shutdown_future_aborts_what_is_left_on_every_runtime() {
    on_every_runtime!(dropping_the_shutdown_future_aborts_what_is_left);
}
