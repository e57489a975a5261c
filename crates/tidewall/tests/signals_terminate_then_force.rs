//! A real SIGTERM to this process starts the shutdown; a second signal forces it. The only
//! test in this binary: the signals go to the whole process (helpers in common/signals.rs).
//!
//! Signals arrive in real time, so this runs on the plain adapters (virtual time would jump
//! to the deadline while a signal is in flight); nothing sleeps: the generous deadline is
//! only a safety net.

#[path = "common/signals.rs"]
mod signals;

use std::time::Duration;

use signals::{ends_of, send_to_self};
use tidewall::rt::{Runtime, Signal, Signals};
use tidewall::task::{
    Ending, Exit,
    shutdown::{Cause, Shutdown},
};

/// A real SIGTERM to this process starts the shutdown; a second one (SIGINT, sent by the
/// component that will not stop) forces it.
async fn real_signals<R: Runtime + Signals>(rt: R) {
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
    let ends = ends_of(&report);
    assert!(matches!(&ends[0], (name, Exit::Ok(()), Ending::Stopped { .. }) if name == "fast"));
    assert!(
        matches!(&ends[1], (name, Exit::Aborted, Ending::Aborted { .. }) if name == "stubborn")
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
