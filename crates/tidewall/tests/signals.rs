//! Real signals to this process: a SIGTERM starts the shutdown, a second signal forces it,
//! and a signal after a triggered shutdown only counts. In a test binary of their own, so no
//! other test shares the process with these signals.
//!
//! Signals arrive in real time, so these run on the plain adapters (virtual time would jump
//! to the deadline while a signal is in flight); nothing sleeps: the generous deadlines are
//! only a safety net.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use tidewall::rt::{Runtime, Signal};
use tidewall::task::{Cause, ComponentEnd, Exit, Shutdown, ShutdownReport, Stopped};

fn pairs(report: &ShutdownReport) -> Vec<(String, ComponentEnd)> {
    report
        .components
        .iter()
        .map(|c| (c.name.to_string(), c.end.clone()))
        .collect()
}

fn send_to_self(signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &std::process::id().to_string()])
        .status()
        .expect("the kill command runs");
    assert!(status.success());
}

/// A real SIGTERM to this process starts the shutdown; a second one (SIGINT, sent by the
/// component that will not stop) forces it. Signals arrive in real time, so this runs on the
/// plain adapters (virtual time would jump to the deadline while a signal is in flight);
/// nothing sleeps: the generous deadline is only a safety net.
async fn real_signals<R: Runtime>(rt: R) {
    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(Duration::from_secs(60))
        .build()
        .unwrap();
    shutdown.listen_for_signals().unwrap();
    shutdown.register("stubborn", move |stop| async move {
        stop.cancelled().await;
        send_to_self("-INT");
        std::future::pending::<()>().await;
        Ok::<(), std::io::Error>(())
    });
    shutdown.register("fast", |stop| async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    });
    send_to_self("-TERM");
    let report = shutdown.run().await;
    assert_eq!(report.cause, Cause::Signal(Signal::Terminate));
    assert!(report.forced && !report.deadline_exceeded);
    let ends = pairs(&report);
    assert!(
        matches!(&ends[0], (name, ComponentEnd::Stopped(Stopped::InTime { exit: Exit::Normal, .. })) if name == "fast")
    );
    assert!(
        matches!(&ends[1], (name, ComponentEnd::Stopped(Stopped::Aborted { .. })) if name == "stubborn")
    );
}

#[test]
fn a_real_signal_starts_the_shutdown_and_a_second_forces_it_on_every_runtime() {
    for threads in [1, 2] {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(real_signals(tidewall::rt::Tokio));
    }
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    current.block_on(real_signals(tidewall::rt::Tokio));
    for runtime in [
        tidewall::rt::SmolRuntime::single_threaded(),
        tidewall::rt::SmolRuntime::multi_threaded(2).unwrap(),
    ] {
        runtime.block_on(real_signals(runtime.handle()));
    }
    async_std::task::block_on(real_signals(tidewall::rt::AsyncStd));
}

/// A shutdown started by the trigger (a preStop hook), then a SIGTERM (the kubelet's): that
/// first signal only counts; the next one (the operator's SIGINT) forces.
async fn a_signal_after_a_trigger_only_counts<R: Runtime>(rt: R) {
    let mut shutdown = Shutdown::builder()
        .runtime(rt.clone())
        .deadline(Duration::from_secs(60))
        .build()
        .unwrap();
    shutdown.listen_for_signals().unwrap();
    let waited_for_second = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&waited_for_second);
    shutdown.register("first-registered", move |stop| async move {
        stop.cancelled().await;
        // Running after its token was cancelled: the SIGTERM did not force the shutdown (a
        // forced one aborts a component as it tells it, before it runs again). Force it now.
        flag.store(true, SeqCst);
        send_to_self("-INT");
        std::future::pending::<()>().await;
        Ok::<(), std::io::Error>(())
    });
    let rt3 = rt.clone();
    shutdown.register("last-registered", move |stop| async move {
        stop.cancelled().await;
        // The kubelet's SIGTERM arrives while this one drains; it finishes after seeing it.
        let own = rt3.shutdown_signals().unwrap();
        send_to_self("-TERM");
        own.await;
        Ok::<(), std::io::Error>(())
    });
    let report = shutdown.stop("preStop hook").await;
    assert!(matches!(&report.cause, Cause::Triggered(r) if r.as_str() == "preStop hook"));
    let ends = pairs(&report);
    assert!(
        matches!(&ends[0], (name, ComponentEnd::Stopped(Stopped::InTime { exit: Exit::Normal, .. })) if name == "last-registered")
    );
    assert!(
        waited_for_second.load(SeqCst),
        "the SIGTERM did not cut the shutdown short"
    );
    assert!(report.forced, "the second signal did");
    assert!(
        matches!(&ends[1], (name, ComponentEnd::Stopped(Stopped::Aborted { .. })) if name == "first-registered")
    );
}

#[test]
fn a_signal_after_a_triggered_shutdown_only_counts_on_every_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(a_signal_after_a_trigger_only_counts(tidewall::rt::Tokio));
    let runtime = tidewall::rt::SmolRuntime::multi_threaded(2).unwrap();
    runtime.block_on(a_signal_after_a_trigger_only_counts(runtime.handle()));
    async_std::task::block_on(a_signal_after_a_trigger_only_counts(tidewall::rt::AsyncStd));
}

#[test]
fn a_runtime_without_its_io_driver_is_an_error_not_a_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let result = runtime.block_on(async { tidewall::rt::Tokio.shutdown_signals().map(drop) });
    assert!(result.is_err());
}
