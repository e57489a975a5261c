//! Adversarial black-box tests of the split runtime seam beyond the clock: a user's type that
//! is only `Clock + Spawn` runs scope, fan-out, worker pool and shutdown on every adapter; a
//! type that only spawns writes a file atomically on the blocking pool; and `Signals` is
//! opt-in. Written from the public docs only.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;
mod seam_support;
mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::Poll;
use std::time::Instant;

use futures_util::StreamExt as _;
use seam_support::{UserClock, secs};
use tidewall::rt::{Clock, Runtime, Spawn, Tokio};
use tidewall::testing::{Clocked, FakeClock, FakeSleep};

// ---------------------------------------------------------------------------------------------
// Runtime = Clock + Spawn; Spawn alone; Signals opt-in
// ---------------------------------------------------------------------------------------------

/// A user's runtime: a `FakeClock` for time, another runtime's executor for spawning.
/// It implements `Clock` and `Spawn` and nothing else.
#[derive(Debug, Clone)]
struct Mixed<S> {
    clock: FakeClock,
    spawner: S,
}

impl<S: Clone + Send + Sync + 'static> Clock for Mixed<S> {
    type Sleep = FakeSleep;
    fn now(&self) -> Instant {
        self.clock.now()
    }
    fn sleep_until(&self, deadline: Instant) -> FakeSleep {
        self.clock.sleep_until(deadline)
    }
}

impl<S: Spawn> Spawn for Mixed<S> {
    type JoinHandle<T: Send + 'static> = tidewall::rt::JoinHandle<S, T>;
    fn spawn<F>(&self, future: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawner.spawn(future)
    }
    fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawner.spawn_blocking(work)
    }
}

/// Only spawning, counting the blocking work it was given.
#[derive(Debug, Clone)]
struct OnlySpawn<S> {
    spawner: S,
    blocking: Arc<AtomicUsize>,
}

impl<S: Spawn> Spawn for OnlySpawn<S> {
    type JoinHandle<T: Send + 'static> = tidewall::rt::JoinHandle<S, T>;
    fn spawn<F>(&self, future: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawner.spawn(future)
    }
    fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.blocking.fetch_add(1, SeqCst);
        self.spawner.spawn_blocking(work)
    }
}

/// Yields to the executor once.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

fn is_runtime<R: Runtime>(_: &R) {}

async fn a_clock_plus_spawn_runs_the_task_patterns<R: Runtime>(rt: Clocked<R>) {
    let mixed = Mixed {
        clock: FakeClock::new(),
        spawner: rt.inner().clone(),
    };
    is_runtime(&mixed);

    // Scope.
    let scope = tidewall::task::scope::Scope::builder()
        .runtime(mixed.clone())
        .build::<u32, &str>()
        .unwrap();
    for n in 0..4u32 {
        scope.spawn(async move { Ok(n * 2) }).await.ok().unwrap();
    }
    let report = scope.join().await;
    assert!(report.is_balanced());
    assert_eq!(report.succeeded, 4);

    // FanOut.
    let mut doubled: Vec<u32> = tidewall::fan_out::FanOut::new(2)
        .unwrap()
        .runtime(mixed.clone())
        .run_iter(1..=5u32, |n| async move { n * 2 })
        .map(|r| r.unwrap())
        .collect()
        .await;
    doubled.sort_unstable();
    assert_eq!(doubled, [2, 4, 6, 8, 10]);

    // WorkerPool, with a job timeout on the user's clock.
    let clock = mixed.clock.clone();
    let pool = tidewall::task::pool::WorkerPool::builder()
        .workers(2)
        .queue(8)
        .job_timeout(secs(1))
        .runtime(mixed.clone())
        .start(move |n: u64| {
            let clock = clock.clone();
            async move {
                if n == 0 {
                    clock.sleep(secs(60)).await;
                }
                n * n
            }
        })
        .unwrap();
    let quick = pool.submit(7).await.ok().unwrap();
    assert!(matches!(quick.await, tidewall::task::Exit::Ok(49)));
    let stuck = pool.submit(0).await.ok().unwrap();
    // Wait (deterministically, on a condition) until the job and its timeout have timers.
    while mixed.clock.pending_timers() < 2 {
        yield_once().await;
    }
    mixed.clock.advance(secs(1));
    assert!(matches!(
        stuck.await,
        tidewall::task::Exit::Err(tidewall::time::Elapsed)
    ));
    let report = pool.shutdown(secs(5)).await;
    assert_eq!((report.submitted, report.completed), (2, 1));

    // Shutdown without Signals: register, trigger, run.
    let mut shutdown = tidewall::task::shutdown::ShutdownBuilder::new()
        .runtime(mixed.clone())
        .build()
        .unwrap();
    shutdown.register("component", |stop| async move {
        stop.cancelled().await;
        Ok::<(), std::io::Error>(())
    });
    shutdown.trigger().cancel("test");
    let report = shutdown.run().await;
    assert!(report.is_clean());
}

#[test]
fn a_type_that_is_only_clock_plus_spawn_runs_scope_fan_out_worker_pool_and_shutdown_on_every_adapter()
 {
    on_every_runtime!(a_clock_plus_spawn_runs_the_task_patterns);
}

#[test]
fn a_type_that_only_spawns_writes_a_file_atomically_on_the_blocking_pool() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let rt = OnlySpawn {
        spawner: Tokio,
        blocking: Arc::new(AtomicUsize::new(0)),
    };
    runtime.block_on(async {
        tidewall::fs::write_atomic(&rt, &path, b"old".to_vec())
            .await
            .unwrap();
        tidewall::fs::write_atomic(&rt, &path, b"new".to_vec())
            .await
            .unwrap();
    });
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert!(
        rt.blocking.load(SeqCst) >= 2,
        "each step runs on the blocking pool"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temporary file left behind: {leftovers:?}"
    );

    // The same on smol's executor, through a Spawn-only type.
    let smol = tidewall::rt::SmolRuntime::single_threaded();
    let rt = OnlySpawn {
        spawner: smol.handle(),
        blocking: Arc::new(AtomicUsize::new(0)),
    };
    smol.block_on(tidewall::fs::write_atomic(&rt, &path, b"smol".to_vec()))
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"smol");
}

/// `Probe::<T>::SIGNALS` is `true` exactly when `T: Signals` (an inherent constant wins over
/// the trait's fallback only where its bound holds).
struct Probe<T>(std::marker::PhantomData<T>);
trait NoSignals {
    const SIGNALS: bool = false;
}
impl<T> NoSignals for Probe<T> {}
impl<T: tidewall::rt::Signals> Probe<T> {
    const SIGNALS: bool = true;
}

#[test]
fn signals_are_opt_in_every_adapter_has_them_and_plain_clocks_do_not() {
    // Checked when the test compiles; the test only has to exist.
    const {
        assert!(Probe::<Tokio>::SIGNALS);
        assert!(Probe::<tidewall::rt::Smol>::SIGNALS);
        assert!(Probe::<tidewall::rt::AsyncStd>::SIGNALS);
        assert!(
            Probe::<Clocked<Tokio>>::SIGNALS,
            "Clocked<R> has R's signals"
        );
        assert!(!Probe::<FakeClock>::SIGNALS);
        assert!(!Probe::<UserClock>::SIGNALS);
        assert!(
            !Probe::<Mixed<Tokio>>::SIGNALS,
            "a user's Clock + Spawn does not get Signals"
        );
    }
}
