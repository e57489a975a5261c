//! One scenario on every runtime adapter, raw and under `Clocked`, each on its own thread with
//! a real-time hang guard: for scenarios that may hang, kill a worker or abort the process
//! when the library is wrong. Include it as `#[path = "common/every_adapter.rs"] mod
//! every_adapter;` beside `mod common;`, then `raw!(scenario)` / `clocked!(scenario)` and
//! [`on_each`].
#![allow(dead_code, unreachable_pub, unused_macros, unused_imports)]

use std::any::Any;
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tidewall::rt::{Clock, Runtime};

/// How long a scenario may run, in real time, before it counts as hung.
pub const HANG: Duration = Duration::from_secs(60);

/// The runtime still runs tasks (on a smol runtime with one worker, that worker survived).
pub async fn still_runs_tasks<R: Runtime>(rt: &R) {
    assert_eq!(rt.spawn(async { 7 }).await.unwrap(), 7, "a later task");
}

/// Under `Clocked`: virtual time still moves, over a short sleep and a long idle gap.
pub async fn time_still_moves<R: Clock>(rt: &R) {
    let start = rt.now();
    rt.sleep(Duration::from_secs(1)).await;
    assert_eq!(rt.now() - start, Duration::from_secs(1));
    rt.sleep(3 * 24 * Duration::from_secs(3600)).await;
    assert_eq!(
        rt.now() - start,
        Duration::from_secs(1) + 3 * 24 * Duration::from_secs(3600)
    );
}

pub type Run = Box<dyn FnOnce() + Send>;

pub fn tokio_multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn tokio_current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `$scenario` on each raw adapter (real time: only scenarios with short sleeps). Smol gets one
/// worker thread, so that a worker killed by an escaped panic leaves none to run the next task.
macro_rules! raw {
    ($scenario:path) => {
        vec![
            (
                "Tokio (multi-thread)",
                Box::new(|| {
                    $crate::every_adapter::tokio_multi_thread()
                        .block_on($scenario(::tidewall::rt::Tokio))
                }) as $crate::every_adapter::Run,
            ),
            (
                "Tokio (current-thread)",
                Box::new(|| {
                    $crate::every_adapter::tokio_current_thread()
                        .block_on($scenario(::tidewall::rt::Tokio))
                }),
            ),
            (
                "Smol (one worker thread)",
                Box::new(|| {
                    let runtime = ::tidewall::rt::SmolRuntime::multi_threaded(1).unwrap();
                    let rt = runtime.handle();
                    runtime.block_on($scenario(rt));
                }),
            ),
            (
                "Smol (single-threaded)",
                Box::new(|| {
                    let runtime = ::tidewall::rt::SmolRuntime::single_threaded();
                    let rt = runtime.handle();
                    runtime.block_on($scenario(rt));
                }),
            ),
            (
                "AsyncStd",
                Box::new(|| ::async_std::task::block_on($scenario(::tidewall::rt::AsyncStd))),
            ),
        ]
    };
}
pub(crate) use raw;

/// `$scenario` on each adapter under `Clocked`, then a check that virtual time still moves.
macro_rules! clocked {
    ($scenario:path) => {
        vec![
            (
                "Clocked<Tokio> (multi-thread)",
                Box::new(|| {
                    $crate::common::on_tokio_multi_thread(|rt| async move {
                        $scenario(rt.clone()).await;
                        $crate::every_adapter::time_still_moves(&rt).await;
                    })
                }) as $crate::every_adapter::Run,
            ),
            (
                "Clocked<Tokio> (current-thread)",
                Box::new(|| {
                    $crate::common::on_tokio_current_thread(|rt| async move {
                        $scenario(rt.clone()).await;
                        $crate::every_adapter::time_still_moves(&rt).await;
                    })
                }),
            ),
            (
                "Clocked<Smol> (multi-threaded)",
                Box::new(|| {
                    $crate::common::on_smol_multi_thread(|rt| async move {
                        $scenario(rt.clone()).await;
                        $crate::every_adapter::time_still_moves(&rt).await;
                    })
                }),
            ),
            (
                "Clocked<Smol> (single-threaded)",
                Box::new(|| {
                    $crate::common::on_smol_single_thread(|rt| async move {
                        $scenario(rt.clone()).await;
                        $crate::every_adapter::time_still_moves(&rt).await;
                    })
                }),
            ),
            (
                "Clocked<AsyncStd>",
                Box::new(|| {
                    $crate::common::on_async_std(
                        |rt: ::tidewall::testing::Clocked<::tidewall::rt::AsyncStd>| async move {
                            $scenario(rt.clone()).await;
                            $crate::every_adapter::time_still_moves(&rt).await;
                        },
                    )
                }),
            ),
        ]
    };
}
pub(crate) use clocked;

pub fn describe(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a non-string panic".to_owned())
}

/// Runs every adapter's scenario at once, each on its own thread, and fails naming every
/// adapter whose scenario panicked or was still running after [`HANG`] of real time (its
/// thread is left behind).
pub fn on_each(runs: Vec<(&'static str, Run)>) {
    let (done, finished) = mpsc::channel();
    let mut running = BTreeSet::new();
    for (name, run) in runs {
        let done = done.clone();
        running.insert(name);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let outcome = catch_unwind(AssertUnwindSafe(run)).map_err(|p| describe(&*p));
                let _ = done.send((name, outcome));
            })
            .unwrap();
    }
    drop(done);
    let deadline = Instant::now() + HANG;
    let mut failures = Vec::new();
    while !running.is_empty() {
        let Ok((name, outcome)) =
            finished.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            break;
        };
        running.remove(name);
        if let Err(panic) = outcome {
            failures.push(format!("{name}: {panic}"));
        }
    }
    failures.extend(
        running
            .into_iter()
            .map(|name| format!("{name}: still running after {HANG:?} (hung)")),
    );
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

pub fn everywhere(runs: Vec<(&'static str, Run)>, more: Vec<(&'static str, Run)>) {
    let mut runs = runs;
    runs.extend(more);
    on_each(runs);
}
