//! A task whose future, or whose output, panics while it is dropped: on every adapter the join
//! handle reports what tokio reports, the executor survives, and under `Clocked` virtual time
//! still moves afterwards.
//!
//! * an aborted task whose future panics when dropped: `Panicked` with that payload (tokio's
//!   `cancel_task` drops the future inside a panic guard);
//! * a future that panics in `Drop` after returning `Ready`: `Panicked` with that payload;
//! * a future that panics in `poll`: dropped while that panic unwinds, `Panicked` with the
//!   poll's payload;
//! * a detached task, or a finished task whose handle is dropped, whose output panics when
//!   dropped: the panic is ignored and the executor keeps running;
//! * a task dropped with its smol executor: `Cancelled` (async-task leaves no way to report
//!   more), and the panic is ignored.
//!
//! Every adapter runs on its own thread with a real-time bound: a hang (a handle that never
//! resolves, an executor thread that died, virtual time that stopped) fails the test instead
//! of blocking the suite. No assertion is about timing.
#![cfg(all(
    feature = "test-util",
    feature = "tokio",
    feature = "smol",
    feature = "async-std"
))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
#[path = "common/every_adapter.rs"]
mod every_adapter;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use every_adapter::{Run, clocked, on_each, raw, still_runs_tasks};
use futures_channel::oneshot;
use tidewall::rt::{JoinError, Runtime, SmolRuntime, Spawn, TaskHandle};

/// Panics with `message` when dropped, unless a panic is already unwinding; first tells
/// `dropped` whether one was.
struct Bomb {
    message: &'static str,
    dropped: Option<oneshot::Sender<bool>>,
}

impl Bomb {
    fn new(message: &'static str) -> Self {
        Self {
            message,
            dropped: None,
        }
    }

    /// A bomb, and a receiver of whether a panic was unwinding when it was dropped.
    fn reporting(message: &'static str) -> (Self, oneshot::Receiver<bool>) {
        let (tx, rx) = oneshot::channel();
        let bomb = Self {
            message,
            dropped: Some(tx),
        };
        (bomb, rx)
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        let unwinding = std::thread::panicking();
        if let Some(dropped) = self.dropped.take() {
            let _ = dropped.send(unwinding);
        }
        if !unwinding {
            panic!("{}", self.message);
        }
    }
}

/// Ready with 7 at its first poll; its bomb goes off when the executor drops it.
struct ReadyThenBomb(#[allow(dead_code)] Bomb);

impl Future for ReadyThenBomb {
    type Output = u32;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u32> {
        Poll::Ready(7)
    }
}

/// Panics in its first poll, holding a bomb.
struct PanicsInPoll(#[allow(dead_code)] Bomb);

impl Future for PanicsInPoll {
    type Output = u32;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u32> {
        panic!("in poll")
    }
}

fn panicked_with(joined: &Result<impl Sized, JoinError>, message: &str) -> bool {
    matches!(joined, Err(JoinError::Panicked(p)) if p.message() == Some(message))
}

// ---------------------------------------------------------------------------------------------
// Scenarios, each generic over the runtime
// ---------------------------------------------------------------------------------------------

/// Aborted while parked at an await point, holding a bomb.
async fn abort_a_running_task<R: Runtime>(rt: R) {
    let (started, has_started) = oneshot::channel();
    let task = rt.spawn(async move {
        let _bomb = Bomb::new("dropped by abort");
        let _ = started.send(());
        std::future::pending::<()>().await;
    });
    has_started.await.unwrap();
    task.abort();
    let joined = task.await;
    assert!(
        panicked_with(&joined, "dropped by abort"),
        "an aborted task whose drop panics: {joined:?}, tokio says Panicked"
    );
    still_runs_tasks(&rt).await;
}

/// Aborted at once: the bomb is in the future's captures whether or not it was polled.
async fn abort_a_task_at_once<R: Runtime>(rt: R) {
    let bomb = Bomb::new("dropped by an early abort");
    let task = rt.spawn(async move {
        let _bomb = bomb;
        std::future::pending::<()>().await;
    });
    task.abort();
    let joined = task.await;
    assert!(
        panicked_with(&joined, "dropped by an early abort"),
        "{joined:?}, tokio says Panicked"
    );
    still_runs_tasks(&rt).await;
}

async fn ready_then_drop_panics<R: Runtime>(rt: R) {
    let joined = rt
        .spawn(ReadyThenBomb(Bomb::new("dropped after ready")))
        .await;
    assert!(
        panicked_with(&joined, "dropped after ready"),
        "a future that panics in Drop after Ready: {joined:?}, tokio says Panicked"
    );
    still_runs_tasks(&rt).await;
}

async fn poll_panics_then_drop<R: Runtime>(rt: R) {
    let (bomb, dropped) = Bomb::reporting("dropped after a panic in poll");
    let joined = rt.spawn(PanicsInPoll(bomb)).await;
    assert!(panicked_with(&joined, "in poll"), "{joined:?}");
    assert!(
        dropped.await.unwrap(),
        "the future is dropped while the poll's panic unwinds, as on tokio"
    );
    still_runs_tasks(&rt).await;
}

/// The handle is dropped before the task returns its bomb, so the executor drops the output.
async fn detached_output_panics_on_drop<R: Runtime>(rt: R) {
    let (go, wait) = oneshot::channel::<()>();
    let (bomb, dropped) = Bomb::reporting("detached output");
    let task = rt.spawn(async move {
        let _ = wait.await;
        bomb
    });
    drop(task);
    go.send(()).unwrap();
    assert!(!dropped.await.unwrap(), "the output was dropped");
    still_runs_tasks(&rt).await;
}

/// The handle is dropped once the task has returned its bomb (or, on a multi-threaded
/// executor, possibly just before it stores it): dropping the handle does not panic.
async fn handle_dropped_after_output<R: Runtime>(rt: R) {
    let (returning, returned) = oneshot::channel();
    let (bomb, dropped) = Bomb::reporting("unread output");
    let task = rt.spawn(async move {
        let _ = returning.send(());
        bomb
    });
    returned.await.unwrap();
    for _ in 0..3 {
        // Lets a single-threaded executor finish the task's poll.
        rt.spawn(async {}).await.unwrap();
    }
    drop(task);
    assert!(!dropped.await.unwrap(), "the output was dropped");
    still_runs_tasks(&rt).await;
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn an_aborted_task_whose_drop_panics_reports_panicked_on_every_adapter() {
    let mut runs = raw!(abort_a_running_task);
    runs.extend(clocked!(abort_a_running_task));
    on_each(runs);
}

#[test]
fn a_task_aborted_at_once_whose_drop_panics_reports_panicked_on_every_adapter() {
    let mut runs = raw!(abort_a_task_at_once);
    runs.extend(clocked!(abort_a_task_at_once));
    on_each(runs);
}

#[test]
fn a_future_that_panics_in_drop_after_ready_reports_panicked_on_every_adapter() {
    let mut runs = raw!(ready_then_drop_panics);
    runs.extend(clocked!(ready_then_drop_panics));
    on_each(runs);
}

#[test]
fn a_future_that_panics_in_poll_is_dropped_while_it_unwinds_on_every_adapter() {
    let mut runs = raw!(poll_panics_then_drop);
    runs.extend(clocked!(poll_panics_then_drop));
    on_each(runs);
}

#[test]
fn a_detached_output_that_panics_on_drop_is_ignored_on_every_adapter() {
    let mut runs = raw!(detached_output_panics_on_drop);
    runs.extend(clocked!(detached_output_panics_on_drop));
    on_each(runs);
}

#[test]
fn dropping_the_handle_of_a_finished_task_whose_output_panics_on_drop_is_quiet() {
    let mut runs = raw!(handle_dropped_after_output);
    runs.extend(clocked!(handle_dropped_after_output));
    on_each(runs);
}

/// `Smol` only: a task dropped unfinished with its executor. async-task hands its handle no
/// result then, so the handle reads `Cancelled` (tokio reports `Panicked`), but the panic must
/// not reach async-task, which would abort the process.
#[test]
fn a_task_dropped_with_its_smol_executor_whose_drop_panics_reads_cancelled() {
    fn scenario(runtime: SmolRuntime) {
        let rt = runtime.handle();
        let (started, has_started) = oneshot::channel();
        let (bomb, dropped) = Bomb::reporting("dropped with the executor");
        let task = rt.spawn(async move {
            let _bomb = bomb;
            let _ = started.send(());
            std::future::pending::<()>().await;
        });
        runtime.block_on(has_started).unwrap();
        // The last handles to the executor: it drops its tasks.
        drop(rt);
        drop(runtime);
        assert!(!smol::block_on(dropped).unwrap(), "the future was dropped");
        let joined = smol::block_on(task);
        assert!(matches!(joined, Err(JoinError::Cancelled)), "{joined:?}");
    }
    on_each(vec![
        (
            "Smol (one worker thread)",
            Box::new(|| scenario(SmolRuntime::multi_threaded(1).unwrap())) as Run,
        ),
        (
            "Smol (single-threaded)",
            Box::new(|| scenario(SmolRuntime::single_threaded())),
        ),
    ]);
}
