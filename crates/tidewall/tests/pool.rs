//! The worker pool: backpressure, outcomes, and shutdown accounting on every runtime.

mod common;
#[path = "common/hang.rs"]
mod hang;

use common::ms;

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};
use std::time::Duration;

use tidewall::ConfigError;
use tidewall::rt::{Clock, JoinError, Runtime, Spawn, TaskHandle, Tokio};
use tidewall::task::Exit;
use tidewall::task::pool::{SubmitError, WorkerPool};
use tidewall::testing::Clocked;
use tidewall::time::Elapsed;

async fn ten_thousand_jobs_then_shutdown<R: Runtime>(rt: Clocked<R>) {
    let rt2 = rt.clone();
    let pool = WorkerPool::builder()
        .workers(4)
        .queue(10_000)
        .runtime(rt.clone())
        .start(move |n: u32| {
            let rt = rt2.clone();
            async move {
                rt.sleep(ms(1)).await;
                n
            }
        })
        .unwrap();
    let mut handles = Vec::new();
    for n in 0..10_000u32 {
        handles.push(pool.try_submit(n).unwrap());
    }
    rt.sleep(ms(10)).await;
    let report = pool.shutdown(ms(50)).await;
    assert_eq!(report.submitted, 10_000);
    assert_eq!(
        report.completed + report.failed + report.handed_back.len() as u64,
        10_000,
        "every job accounted for"
    );
    assert!(
        report.completed >= 200,
        "about 4 per ms for 60 ms: {}",
        report.completed
    );
    assert!(!report.handed_back.is_empty());
    // Handed back in submission order, right after the last one started.
    assert!(report.handed_back.windows(2).all(|w| w[0] + 1 == w[1]));
    // A handle reads `Aborted` for a job handed back and for one aborted at the deadline
    // alike: the report counts the two apart.
    let mut exits = (0, 0, 0);
    for handle in handles {
        match handle.await {
            Exit::Ok(_) => exits.0 += 1,
            Exit::Aborted => exits.1 += 1,
            _ => exits.2 += 1,
        }
    }
    assert_eq!(exits.0, report.completed);
    assert_eq!(
        exits.1,
        report.handed_back.len() as u64 + report.aborted,
        "each handle says why"
    );
    assert_eq!(exits.2, report.failed - report.aborted);
}

#[test]
fn ten_thousand_queued_jobs_are_all_accounted_for_on_every_runtime() {
    on_every_runtime!(ten_thousand_jobs_then_shutdown);
}

async fn backpressure_outcomes_and_rejections<R: Runtime>(rt: Clocked<R>) {
    let rt2 = rt.clone();
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(2)
        .job_timeout(ms(500))
        .runtime(rt.clone())
        .start(move |job: (u64, bool)| {
            let rt = rt2.clone();
            async move {
                rt.sleep(ms(job.0)).await;
                assert!(!job.1, "job asked to panic");
                job.0
            }
        })
        .unwrap();
    let start = rt.now();
    let first = pool.submit((100, false)).await.unwrap();
    rt.sleep(ms(1)).await; // the worker takes it
    let panics = pool.submit((0, true)).await.unwrap();
    let slow = pool.submit((1_000, false)).await.unwrap();
    // Queue full (2 waiting): try_submit hands the job back, submit waits for room.
    assert_eq!(
        pool.try_submit((5, false)).unwrap_err(),
        SubmitError::Full((5, false))
    );
    let waited = pool.submit((5, false)).await.unwrap();
    assert!(
        rt.now() - start >= ms(100),
        "submit waited for the first job to finish"
    );
    assert!(matches!(first.await, Exit::Ok(100)));
    assert!(
        matches!(panics.await, Exit::Panicked(_)),
        "a panic is reported, not lost"
    );
    assert!(matches!(slow.await, Exit::Err(Elapsed)));
    assert!(
        matches!(waited.await, Exit::Ok(5)),
        "the worker went on after the panic"
    );
    let report = pool.shutdown(ms(100)).await;
    assert_eq!(
        (report.submitted, report.completed, report.failed),
        (4, 2, 2)
    );
}

#[test]
fn backpressure_panics_and_timeouts_on_every_runtime() {
    on_every_runtime!(backpressure_outcomes_and_rejections);
}

/// A value that panics when dropped, if armed.
#[derive(Debug)]
struct Bomb(bool);

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.0 {
            panic!("a job's value panics on drop (on purpose)");
        }
    }
}

/// "So it does when a job's destructors panic: those of a job its timeout drops, or of a value
/// whose handle was dropped": one worker lives through both and runs the next job.
async fn panicking_destructors_leave_the_worker<R: Runtime>(rt: Clocked<R>) {
    let rt2 = rt.clone();
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(4)
        .job_timeout(Duration::from_secs(1))
        .runtime(rt.clone())
        .start(move |n: u8| {
            let rt = rt2.clone();
            async move {
                let held = Bomb(n == 1);
                rt.sleep(if n == 1 {
                    Duration::from_secs(10)
                } else {
                    ms(1)
                })
                .await;
                std::mem::forget(held);
                Bomb(n == 0)
            }
        })
        .unwrap();
    // Nobody wants job 0's value: the worker drops it.
    drop(pool.submit(0).await.unwrap());
    let timed_out = pool.submit(1).await.unwrap();
    let next = pool.submit(2).await.unwrap();
    assert!(matches!(timed_out.await, Exit::Err(Elapsed)));
    match next.await {
        Exit::Ok(value) => assert!(!value.0),
        other => panic!("the worker went on: {other:?}"),
    }
    let report = pool.shutdown(ms(100)).await;
    assert_eq!(
        (
            report.submitted,
            report.completed,
            report.failed,
            report.aborted
        ),
        (3, 2, 1, 0)
    );
}

#[test]
fn panicking_destructors_leave_the_worker_on_every_runtime() {
    // A worker lost to a destructor leaves the next job waiting for ever.
    hang::without_hanging("a job's destructor panics", || {
        on_every_runtime!(panicking_destructors_leave_the_worker);
    });
}

async fn closed_pools_hand_jobs_back<R: Runtime>(rt: Clocked<R>) {
    let rt2 = rt.clone();
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(1)
        .runtime(rt.clone())
        .start(move |n: u8| {
            let rt = rt2.clone();
            async move {
                rt.sleep(ms(100)).await;
                n
            }
        })
        .unwrap();
    let submitter = pool.submitter();
    let running = submitter.submit(1).await.unwrap();
    rt.sleep(ms(1)).await;
    let _queued = submitter.submit(2).await.unwrap();
    // A producer waiting for room when the pool shuts down gets its job back.
    let waiting = {
        let submitter = submitter.clone();
        rt.spawn(async move { submitter.submit(3).await.map(drop) })
    };
    rt.sleep(ms(1)).await;
    let report = pool.shutdown(ms(10)).await;
    assert_eq!(waiting.await.unwrap(), Err(SubmitError::Closed(3)));
    assert_eq!(submitter.try_submit(4).unwrap_err(), SubmitError::Closed(4));
    // Job 1 was aborted at the deadline; job 2 never started and comes back.
    assert_eq!(
        (
            report.submitted,
            report.completed,
            report.aborted,
            report.handed_back
        ),
        (2, 0, 1, vec![2])
    );
    assert!(matches!(running.await, Exit::Aborted));
}

#[test]
fn closed_pools_hand_jobs_back_on_every_runtime() {
    on_every_runtime!(closed_pools_hand_jobs_back);
}

async fn drain_deadline_with_a_finished_worker<R: Runtime>(rt: Clocked<R>) {
    // Two workers, one long job: the idle worker exits at close, the busy one is aborted at
    // the deadline. Each handle is awaited once (tokio's panic if polled after completion).
    let rt2 = rt.clone();
    let pool = WorkerPool::builder()
        .workers(2)
        .queue(4)
        .runtime(rt.clone())
        .start(move |d: u64| {
            let rt = rt2.clone();
            async move {
                rt.sleep(ms(d)).await;
                d
            }
        })
        .unwrap();
    let long = pool.submit(1_000).await.unwrap();
    rt.sleep(ms(1)).await;
    let report = pool.shutdown(ms(50)).await;
    assert_eq!(
        (
            report.submitted,
            report.completed,
            report.failed,
            report.aborted
        ),
        (1, 0, 1, 1)
    );
    assert!(matches!(long.await, Exit::Aborted));
}

#[test]
fn drain_deadline_with_a_finished_worker_on_every_runtime() {
    on_every_runtime!(drain_deadline_with_a_finished_worker);
}

async fn a_producer_that_gives_up_does_not_strand_others<R: Runtime>(rt: Clocked<R>) {
    use tidewall::FutureExt as _;
    let rt2 = rt.clone();
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(1)
        .runtime(rt.clone())
        .start(move |d: u64| {
            let rt = rt2.clone();
            async move {
                rt.sleep(ms(d)).await;
                d
            }
        })
        .unwrap();
    let submitter = pool.submitter();
    let _running = submitter.submit(100).await.unwrap();
    rt.sleep(ms(1)).await;
    let _queued = submitter.submit(100).await.unwrap();
    // B waits for room; A waits too, then gives up before room frees.
    let b = {
        let submitter = submitter.clone();
        rt.spawn(async move { submitter.submit(1).await.map(drop) })
    };
    rt.sleep(ms(1)).await;
    assert!(
        submitter.submit(2).timeout_on(&rt, ms(10)).await.is_err(),
        "A gave up"
    );
    assert_eq!(
        b.await.unwrap(),
        Ok(()),
        "B got the room A's wake-up could have swallowed"
    );
    let report = pool.shutdown(ms(1_000)).await;
    assert_eq!((report.submitted, report.completed), (3, 3));
}

#[test]
fn a_producer_that_gives_up_does_not_strand_others_on_every_runtime() {
    on_every_runtime!(a_producer_that_gives_up_does_not_strand_others);
}

async fn a_handler_that_panics_before_its_first_await<R: Runtime>(rt: Clocked<R>) {
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(4)
        .runtime(rt.clone())
        .start(|n: u8| {
            assert_ne!(n, 0, "eager panic");
            async move { n }
        })
        .unwrap();
    let eager = pool.submit(0).await.unwrap();
    let fine = pool.submit(1).await.unwrap();
    assert!(matches!(eager.await, Exit::Panicked(_)));
    assert!(matches!(fine.await, Exit::Ok(1)), "the worker survived");
    let report = pool.shutdown(ms(10)).await;
    assert_eq!(
        (report.submitted, report.completed, report.failed),
        (2, 1, 1)
    );
}

#[test]
fn an_eager_handler_panic_is_reported_on_every_runtime() {
    on_every_runtime!(a_handler_that_panics_before_its_first_await);
}

#[test]
fn bad_configuration_is_a_typed_error() {
    let rt = Clocked::new(tidewall::rt::Tokio);
    let start = |w, q, t: Option<Duration>| {
        let builder = WorkerPool::builder()
            .workers(w)
            .queue(q)
            .runtime(rt.clone());
        let builder = match t {
            Some(t) => builder.job_timeout(t),
            None => builder,
        };
        builder.start(|n: u8| async move { n }).map(drop)
    };
    assert_eq!(
        start(0, 1, None),
        Err(ConfigError::Zero { field: "workers" })
    );
    assert_eq!(start(1, 0, None), Err(ConfigError::Zero { field: "queue" }));
    assert_eq!(
        start(1, 1, Some(Duration::ZERO)),
        Err(ConfigError::Zero {
            field: "job_timeout"
        })
    );
}

/// The same on tokio's own join handles, which panic if polled after completion.
#[test]
fn drain_deadline_with_a_finished_worker_on_plain_tokio() {
    // Paused tokio time: virtual, yet tokio's own join handles (which panic when polled
    // after completion) and its own timers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let pool = WorkerPool::builder()
            .workers(2)
            .queue(4)
            .runtime(tidewall::rt::Tokio)
            .start(|d: u64| async move {
                tokio::time::sleep(ms(d)).await;
                d
            })
            .unwrap();
        let long = pool.submit(10_000).await.unwrap();
        tokio::time::sleep(ms(20)).await;
        let report = pool.shutdown(ms(50)).await;
        assert_eq!((report.completed, report.aborted), (0, 1));
        assert!(matches!(long.await, Exit::Aborted));
    });
}

/// Dropped without `shutdown`, a pool closes: its queued jobs still run, a submitter is
/// refused with `Closed`, and the workers stop (the handler they hold is released) instead
/// of waiting for jobs for ever.
async fn a_dropped_pool_closes_and_its_workers_stop<R: Runtime>(rt: Clocked<R>) {
    let held = std::sync::Arc::new(());
    let (rt2, mine) = (rt.clone(), std::sync::Arc::clone(&held));
    let pool = WorkerPool::builder()
        .workers(2)
        .queue(8)
        .runtime(rt.clone())
        .start(move |n: u32| {
            let (rt, _mine) = (rt2.clone(), std::sync::Arc::clone(&mine));
            async move {
                rt.sleep(ms(5)).await;
                n
            }
        })
        .unwrap();
    let submitter = pool.submitter();
    let handles: Vec<_> = (0..6).map(|n| pool.try_submit(n).unwrap()).collect();
    drop(pool);
    assert!(matches!(
        submitter.try_submit(9),
        Err(SubmitError::Closed(9))
    ));
    for (n, handle) in (0..6).zip(handles) {
        assert!(
            matches!(handle.await, Exit::Ok(got) if got == n),
            "job {n} ran"
        );
    }
    for _ in 0..100 {
        if std::sync::Arc::strong_count(&held) == 1 {
            break;
        }
        rt.sleep(ms(1)).await;
    }
    assert_eq!(
        std::sync::Arc::strong_count(&held),
        1,
        "every worker stopped"
    );
    drop(submitter);
}

#[test]
fn a_dropped_pool_closes_and_its_workers_stop_on_every_runtime() {
    on_every_runtime!(a_dropped_pool_closes_and_its_workers_stop);
}

/// A runtime that runs its first spawn here and its second on a runtime of its own, which the
/// test can drop: the pool's second worker is lost while it sits idle. Each worker's first
/// `Pending` (it parked, waiting for a job) is signalled, and the second starts only once
/// the test lets it, so it parks after the first.
#[derive(Clone)]
struct SecondWorkerElsewhere {
    spawned: Arc<AtomicUsize>,
    elsewhere: tokio::runtime::Handle,
    start_second: Arc<tokio::sync::Notify>,
    parked: [Arc<tokio::sync::Notify>; 2],
}

/// A task's result as the pool wants it: `Cancelled` if the task was dropped unfinished.
struct Joined<T> {
    result: tokio::sync::oneshot::Receiver<T>,
    task: tokio::task::AbortHandle,
}

impl<T> Future for Joined<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.result)
            .poll(cx)
            .map(|sent| sent.map_err(|_| JoinError::Cancelled))
    }
}

impl<T: Send + 'static> TaskHandle<T> for Joined<T> {
    fn abort(&self) {
        self.task.abort();
    }
}

/// Signals `parked` the first time `future` is pending.
async fn signal_first_pending<F: Future>(future: F, parked: Arc<tokio::sync::Notify>) {
    let mut future = pin!(future);
    let mut signalled = false;
    std::future::poll_fn(|cx| {
        let poll = future.as_mut().poll(cx);
        if poll.is_pending() && !signalled {
            signalled = true;
            parked.notify_one();
        }
        poll.map(drop)
    })
    .await;
}

impl Clock for SecondWorkerElsewhere {
    type Sleep = <Tokio as Clock>::Sleep;

    fn now(&self) -> std::time::Instant {
        Tokio.now()
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Self::Sleep {
        Tokio.sleep_until(deadline)
    }
}

impl Spawn for SecondWorkerElsewhere {
    type JoinHandle<T: Send + 'static> = Joined<T>;

    fn spawn<F>(&self, future: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (sent, result) = tokio::sync::oneshot::channel();
        let run = async move {
            drop(sent.send(future.await));
        };
        let nth = self.spawned.fetch_add(1, SeqCst);
        let parked = Arc::clone(&self.parked[nth.min(1)]);
        let task = if nth == 1 {
            let start = Arc::clone(&self.start_second);
            self.elsewhere.spawn(async move {
                start.notified().await;
                signal_first_pending(run, parked).await;
            })
        } else {
            tokio::spawn(signal_first_pending(run, parked))
        };
        Joined {
            result,
            task: task.abort_handle(),
        }
    }

    fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (sent, result) = tokio::sync::oneshot::channel();
        let task = tokio::task::spawn_blocking(move || drop(sent.send(work())));
        Joined {
            result,
            task: task.abort_handle(),
        }
    }
}

/// A worker its runtime drops while it waits for a job takes its place among the idle
/// workers with it: the next job goes to a worker still alive, not to a waker that wakes
/// nobody. (Before, the lost worker's waker stayed behind; parked last, it was the one a
/// submit woke, and the job waited with a live worker idle.)
#[tokio::test]
async fn a_worker_lost_while_idle_leaves_no_waker_a_job_would_go_to() {
    let lost = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let rt = SecondWorkerElsewhere {
        spawned: Arc::default(),
        elsewhere: lost.handle().clone(),
        start_second: Arc::default(),
        parked: [Arc::default(), Arc::default()],
    };
    let pool = WorkerPool::builder()
        .workers(2)
        .queue(10)
        .runtime(rt.clone())
        .start(|n: u32| async move { n + 1 })
        .unwrap();
    // The first worker parks, then the second, last.
    rt.parked[0].notified().await;
    rt.start_second.notify_one();
    rt.parked[1].notified().await;
    // Its runtime goes, and the second worker with it, idle.
    std::thread::spawn(move || drop(lost)).join().unwrap();
    let job = pool.try_submit(41).unwrap();
    // A bound on a hang only: the job is the live worker's at once.
    let exit = tokio::time::timeout(Duration::from_secs(60), job)
        .await
        .expect("the job went to the lost worker's waker and nobody ran it");
    assert!(matches!(exit, Exit::Ok(42)), "{exit:?}");
    let report = pool.shutdown(Duration::from_secs(60)).await;
    assert_eq!((report.submitted, report.completed), (1, 1), "{report:?}");
}
