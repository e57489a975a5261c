//! A signal after a triggered shutdown only counts; the next one forces. The only test in
//! this binary: the signals go to the whole process (helpers in common/signals.rs).
//!
//! Signals arrive in real time, so this runs on the plain adapters (virtual time would jump
//! to the deadline while a signal is in flight); nothing sleeps: the generous deadline is
//! only a safety net.

#[path = "common/signals.rs"]
mod signals;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use signals::{ends_of, send_to_self};
use tidewall::rt::{Runtime, Signals};
use tidewall::task::{
    Ending, Exit,
    shutdown::{Cause, Shutdown},
};

/// A shutdown started by the trigger (a preStop hook), then a SIGTERM (the kubelet's): that
/// first signal only counts; the next one (the operator's SIGINT) forces.
async fn a_signal_after_a_trigger_only_counts<R: Runtime + Signals>(rt: R) {
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
    let ends = ends_of(&report);
    assert!(
        matches!(&ends[0], (name, Exit::Ok(()), Ending::Stopped { .. }) if name == "last-registered")
    );
    assert!(
        waited_for_second.load(SeqCst),
        "the SIGTERM did not cut the shutdown short"
    );
    assert!(report.forced, "the second signal did");
    assert!(
        matches!(&ends[1], (name, Exit::Aborted, Ending::Aborted { .. }) if name == "first-registered")
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
