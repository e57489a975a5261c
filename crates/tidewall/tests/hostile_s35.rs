//! Hostile black-box tests of the contracts changed by the audit-s35 fixes (`git log
//! a5605a7..HEAD`), written from the public rustdoc only and composed the way users compose
//! them: fan-outs over runtimes that lose tasks (a real tokio runtime shut down under them
//! included), scopes and pools whose values panic on drop, probes that panic in every way, a
//! follower whose checks are lost at seeded points, supervisors busy stopping siblings while
//! others fail, listeners that panic inside pipelines, tower layers and keyed tables, queues
//! shrunk below their waiters, threads racing resets of a breaker, an algorithm that answers
//! zero, and `write_atomic` losing each step in turn.
//!
//! Every test names the doc sentence it checks. Time is virtual (`tidewall::testing::Clocked`,
//! `FakeClock`); randomness is a seeded `SplitMix64`; a real-time bound is only a hang guard
//! (`common/hang.rs`). Scenarios documented as runtime-generic run on every adapter.
#![cfg(all(
    feature = "tokio",
    feature = "smol",
    feature = "async-std",
    feature = "tower",
    feature = "test-util"
))]
#![allow(clippy::too_many_lines, clippy::cast_possible_truncation)]

mod common;
#[path = "common/hang.rs"]
mod hang;
#[path = "common/spawn_adapters.rs"]
mod spawn_adapters;

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Write as _};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::ms;
use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use spawn_adapters::{DropsUnpolled, LosesBlocking, PanicAt};
use tidewall::adaptive::{AdaptiveLimiter, FixedLimit, LimitAlgorithm, Priority, Sample};
use tidewall::admission::{Admission, Wait};
use tidewall::breaker::{CircuitBreaker, Reconfigured, State, Window};
use tidewall::bulkhead::Bulkhead;
use tidewall::fan_out::{FanOut, FanOutError};
use tidewall::pipeline::Pipeline;
use tidewall::rt::{Clock, JoinError, Panic, Runtime, Spawn, TaskHandle, Tokio};
use tidewall::stream::{StreamOps as _, follow_on};
use tidewall::task::pool::WorkerPool;
use tidewall::task::scope::{FailurePolicy, Scope};
use tidewall::task::supervisor::{
    ChildSpec, Ended, Restart, Strategy, Supervisor, SupervisorEvent,
};
use tidewall::task::{CancellationToken, Exit, Health, HealthChecker};
use tidewall::telemetry::{Event, EventKind};
use tidewall::testing::{Clocked, FakeClock};
use tidewall::time::Elapsed;
use tidewall::tower::{AdmitLayer, AdmitMode, BreakerLayer};
use tidewall::{Backoff, Deadline, Error, FutureExt as _, Jitter, Rejected};
use tidewall_core::rng::SplitMix64;
use tower::ServiceExt as _;
use tower_layer::Layer as _;
use tower_service::Service as _;

const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3_600);
/// The longest duration the builders accept: `u64::MAX` nanoseconds (about 584 years).
const MAX_NS: Duration = Duration::from_nanos(u64::MAX);

// === shared helpers ===========================================================================

/// Awaits `fut`, failing (instead of hanging) if it takes longer than `limit` of virtual time.
async fn within<R: Clock, F: Future>(rt: &R, limit: Duration, what: &str, fut: F) -> F::Output {
    match fut.timeout_on(rt, limit).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: still pending after {limit:?} of virtual time"),
    }
}

/// One poll with a waker that does nothing (the tests that use it re-poll by hand).
fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

/// A value that panics when dropped, if armed.
#[derive(Debug)]
struct Bomb {
    armed: bool,
    id: u32,
}

impl Bomb {
    fn armed(id: u32) -> Self {
        Self { armed: true, id }
    }

    fn dud(id: u32) -> Self {
        Self { armed: false, id }
    }
}

impl Drop for Bomb {
    fn drop(&mut self) {
        if self.armed {
            panic!("bomb {} goes off on drop (on purpose)", self.id);
        }
    }
}

/// A uniformly drawn number in `0..=max`.
fn draw(rng: &mut SplitMix64, max: u64) -> u64 {
    rng.below_or_equal(max)
}

/// A listener that panics whenever it is told a queued caller was admitted.
fn panics_when_waited(event: &Event<'_>) {
    if matches!(event.kind, EventKind::Waited(_)) {
        panic!("the listener panics (on purpose)");
    }
}

/// Sleeps in small virtual steps until `done()` holds (at most `limit` of virtual time).
async fn until<R: Clock>(rt: &R, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = rt.now();
    while !done() {
        assert!(rt.now() - start < limit, "{what}: never happened");
        rt.sleep(ms(1)).await;
    }
}

// === 1. fan_out: a task dropped before its first poll reports Cancelled ========================

/// The inputs a seeded runtime loses (spawn number = input number: inputs are spawned in the
/// order they are taken).
fn seeded_loss(n: usize) -> bool {
    SplitMix64::new(0x5335_0000 + n as u64)
        .next_u64()
        .is_multiple_of(3)
}

/// How long input `i` works: from nothing to three hours (long idle gaps).
fn seeded_work(i: u32) -> Duration {
    let mut rng = SplitMix64::new(0xF00D + u64::from(i));
    match draw(&mut rng, 3) {
        0 => Duration::ZERO,
        1 => ms(draw(&mut rng, 50)),
        2 => Duration::from_secs(draw(&mut rng, 600)),
        _ => HOUR * draw(&mut rng, 3) as u32,
    }
}

/// Docs (`FanOut::run`): "yields each outcome, with a panic or a runtime cancellation as
/// JoinError"; (`FanOut::ordered`): "Delivers results in input order"; module docs: "Bounded:
/// at most `limit` inputs are taken and not yet delivered". A runtime that drops a third of the
/// tasks unpolled, at seeded places, with work from zero to hours: one outcome per input, in
/// input order, each loss exactly where it happened, and no slot kept after the end.
async fn fan_out_with_seeded_losses<R: Runtime>(rt: Clocked<R>) {
    const N: u32 = 40;
    for ordered in [true, false] {
        let lossy = DropsUnpolled {
            inner: rt.clone(),
            spawns: Arc::new(AtomicUsize::new(0)),
            lose: seeded_loss,
        };
        let fan_out = FanOut::new(3).unwrap().runtime(lossy);
        let fan_out = if ordered { fan_out.ordered() } else { fan_out };
        let r = rt.clone();
        let mut results = Box::pin(fan_out.run_iter(0..N, move |i| {
            let r = r.clone();
            async move {
                r.sleep(seeded_work(i)).await;
                i
            }
        }));
        let mut got = Vec::new();
        while let Some(outcome) =
            within(&rt, HOUR * 200, "the fan-out to end", results.next()).await
        {
            assert!(results.in_flight() <= 3, "bounded by the limit");
            got.push(outcome);
        }
        assert_eq!(
            results.in_flight(),
            0,
            "ordered {ordered}: no slot kept after the end"
        );
        assert_eq!(
            got.len(),
            N as usize,
            "ordered {ordered}: one outcome per input"
        );
        let expected_lost: Vec<u32> = (0..N).filter(|&i| seeded_loss(i as usize)).collect();
        assert!(expected_lost.len() > 5, "the seed loses a fair share");
        if ordered {
            for (i, outcome) in got.iter().enumerate() {
                if seeded_loss(i) {
                    assert!(
                        matches!(outcome, Err(JoinError::Cancelled)),
                        "input {i} was lost: {outcome:?}"
                    );
                } else {
                    assert_eq!(outcome.as_ref().ok(), Some(&(i as u32)), "input order");
                }
            }
        } else {
            let mut kept: Vec<u32> = got
                .iter()
                .filter_map(|r| r.as_ref().ok().copied())
                .collect();
            kept.sort_unstable();
            let expected: Vec<u32> = (0..N).filter(|&i| !seeded_loss(i as usize)).collect();
            assert_eq!(kept, expected);
            let cancelled = got
                .iter()
                .filter(|r| matches!(r, Err(JoinError::Cancelled)))
                .count();
            assert_eq!(cancelled, expected_lost.len());
        }
    }
}

#[test]
fn fan_out_with_seeded_losses_on_every_runtime() {
    hang::without_hanging("fan-out over a lossy runtime", || {
        on_every_runtime!(fan_out_with_seeded_losses);
    });
}

/// Docs (`FanOut::try_run`): "the first error or panic aborts the running tasks whose results
/// would come after it ... and ends the stream after it is yielded"; (`FanOutError::Task`): "A
/// task panicked or was cancelled by its runtime"; module docs: "It takes no input once an
/// error or panic has been reported by its task (checked before each input it takes)" and, for
/// an ordered fan-out, "the earlier ones run on, and their results are yielded before the
/// error". A task lost unpolled (reported as it is spawned) is such an error.
async fn try_run_stops_at_a_task_lost_unpolled<R: Runtime>(rt: Clocked<R>) {
    let lossy = DropsUnpolled {
        inner: rt.clone(),
        spawns: Arc::new(AtomicUsize::new(0)),
        lose: |n| n == 5,
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let (r, counted) = (rt.clone(), Arc::clone(&calls));
    let mut results = Box::pin(
        FanOut::new(3)
            .unwrap()
            .ordered()
            .runtime(lossy)
            .try_run_iter(0..30u32, move |i| {
                counted.fetch_add(1, SeqCst);
                let r = r.clone();
                async move {
                    // Earlier inputs finish later: the error must still wait for them.
                    r.sleep(ms(u64::from(10 - i.min(10)) * 7)).await;
                    Ok::<u32, String>(i)
                }
            }),
    );
    let mut got = Vec::new();
    while let Some(item) = within(&rt, HOUR, "the fail-fast fan-out to end", results.next()).await {
        got.push(item);
    }
    assert_eq!(got.len(), 6, "inputs 0..5, then the lost one: {got:?}");
    for (i, item) in got[..5].iter().enumerate() {
        assert_eq!(
            item.as_ref().ok(),
            Some(&(i as u32)),
            "yielded before the error"
        );
    }
    assert!(
        matches!(got[5], Err(FanOutError::Task(JoinError::Cancelled))),
        "{:?}",
        got[5]
    );
    assert_eq!(
        calls.load(SeqCst),
        6,
        "no input taken after the loss was reported"
    );
}

#[test]
fn try_run_stops_at_a_task_lost_unpolled_on_every_runtime() {
    hang::without_hanging("fail-fast over a lossy runtime", || {
        on_every_runtime!(try_run_stops_at_a_task_lost_unpolled);
    });
}

/// A runtime adapter over a tokio `Handle` (a runtime other than the one polling): what a user
/// writes to keep a fan-out's work on a dedicated runtime. Spawning after that runtime shut
/// down is the real case the fix is about: tokio drops the task unpolled.
#[derive(Clone)]
struct OnHandle(tokio::runtime::Handle);

struct HandleJoin<T>(tokio::task::JoinHandle<T>);

impl<T> Future for HandleJoin<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| {
            r.map_err(|e| {
                if e.is_panic() {
                    JoinError::Panicked(Panic::new(e.into_panic()))
                } else {
                    JoinError::Cancelled
                }
            })
        })
    }
}

impl<T: Send + 'static> TaskHandle<T> for HandleJoin<T> {
    fn abort(&self) {
        self.0.abort();
    }
}

impl Clock for OnHandle {
    type Sleep = <Tokio as Clock>::Sleep;

    fn now(&self) -> std::time::Instant {
        Tokio.now()
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Self::Sleep {
        Tokio.sleep_until(deadline)
    }
}

impl Spawn for OnHandle {
    type JoinHandle<T: Send + 'static> = HandleJoin<T>;

    fn spawn<F>(&self, fut: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        HandleJoin(self.0.spawn(fut))
    }

    fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        HandleJoin(self.0.spawn_blocking(work))
    }
}

/// Docs (`StreamOps::par_map_on`): "delivering in input order ... See FanOut for the full
/// contract"; (`FanOut::run`): "a runtime cancellation as JoinError". The work runs on a second
/// tokio runtime that is shut down mid-stream: the tasks it was running are dropped, and every
/// later input is spawned onto a runtime that drops it unpolled. Every one of them must come
/// back as `Err(Cancelled)`, and the stream must end.
#[test]
fn par_map_over_a_tokio_runtime_shut_down_mid_stream() {
    for ordered in [true, false] {
        hang::without_hanging("par_map over a runtime that shuts down", move || {
            let workers = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let on = OnHandle(workers.handle().clone());
            let mut workers = Some(workers);
            let main = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            main.block_on(async move {
                let work = |i: u32| async move {
                    if i >= 3 {
                        std::future::pending::<()>().await;
                    }
                    i
                };
                let inputs = futures_util::stream::iter(0..20u32);
                let mut results = if ordered {
                    Box::pin(inputs.par_map_on(&on, 4, work).unwrap())
                } else {
                    Box::pin(inputs.par_map_unordered_on(&on, 4, work).unwrap())
                };
                let mut first = Vec::new();
                for _ in 0..3 {
                    first.push(results.next().await.unwrap().expect("inputs 0..3 complete"));
                }
                if ordered {
                    assert_eq!(first, [0, 1, 2], "input order");
                } else {
                    first.sort_unstable();
                    assert_eq!(first, [0, 1, 2]);
                }
                // The runtime running the work goes away (its tasks are dropped), and every
                // later spawn lands on a runtime that has shut down.
                workers.take().unwrap().shutdown_background();
                let mut rest = Vec::new();
                while let Some(outcome) = results.next().await {
                    rest.push(outcome);
                }
                assert_eq!(rest.len(), 17, "one outcome per input: {rest:?}");
                assert!(
                    rest.iter().all(|r| matches!(r, Err(JoinError::Cancelled))),
                    "{rest:?}"
                );
                assert_eq!(results.in_flight(), 0);
            });
        });
    }
}

/// Docs (`FanOutStream::abort`): "Aborts every running task and takes no more input; the
/// stream then ends once the results that already arrived are delivered". Module docs:
/// "dropping the stream aborts every task still running". Over a lossy runtime, the consumer
/// aborts or drops at a seeded point: the stream always ends, delivers no more than it was
/// given, and in input order.
async fn fan_out_abort_at_seeded_points_over_a_lossy_runtime<R: Runtime>(rt: Clocked<R>) {
    let mut rng = SplitMix64::new(0xAB0);
    for round in 0..12u32 {
        let lossy = DropsUnpolled {
            inner: rt.clone(),
            spawns: Arc::new(AtomicUsize::new(0)),
            lose: seeded_loss,
        };
        let r = rt.clone();
        let mut results = Box::pin(FanOut::new(4).unwrap().ordered().runtime(lossy).run_iter(
            0..25u32,
            move |i| {
                let r = r.clone();
                async move {
                    r.sleep(seeded_work(i)).await;
                    i
                }
            },
        ));
        let take = draw(&mut rng, 20) as usize;
        let mut last = None;
        for _ in 0..take {
            match within(&rt, HOUR * 100, "a result", results.next()).await {
                Some(Ok(i)) => {
                    assert!(last.is_none_or(|l| i > l), "round {round}: input order");
                    last = Some(i);
                }
                Some(Err(e)) => assert!(e.is_cancelled(), "round {round}: {e:?}"),
                None => panic!("round {round}: ended early"),
            }
        }
        if round % 2 == 0 {
            drop(results);
            continue;
        }
        results.as_mut().abort();
        let mut after = 0;
        while let Some(outcome) =
            within(&rt, HOUR, "the aborted stream to end", results.next()).await
        {
            after += 1;
            if let Ok(i) = outcome {
                assert!(last.is_none_or(|l| i > l), "round {round}: input order");
                last = Some(i);
            }
        }
        assert!(
            take + after <= 25,
            "round {round}: more outcomes than inputs"
        );
        assert_eq!(results.in_flight(), 0, "round {round}");
    }
}

#[test]
fn fan_out_abort_at_seeded_points_on_every_runtime() {
    hang::without_hanging("aborted fan-outs over a lossy runtime", || {
        on_every_runtime!(fan_out_abort_at_seeded_points_over_a_lossy_runtime);
    });
}

// === 2. scope: a discarded value panicking on drop strands no waiter ==========================

/// Docs (`ScopeBuilder::discard_ok`): "If its `Drop` panics, the child still counts as
/// succeeded and whoever waits on the scope (`join`, `next`, a `spawn` waiting for a slot) is
/// still woken; the panic goes on to the child's task". Scope docs: "`next`: `None` when no
/// child is running and no report is waiting". Seeded children (armed bombs, duds, errors,
/// sleeps of up to an hour) through a limit of 2, on every runtime.
async fn discarded_bombs_wake_every_waiter<R: Runtime>(rt: Clocked<R>) {
    let mut scope = Scope::builder()
        .runtime(rt.clone())
        .discard_ok()
        .limit(2)
        .policy(FailurePolicy::CollectAll)
        .build::<Bomb, String>()
        .unwrap();
    // `next` waits for the only child, whose value goes off as it is discarded.
    let r = rt.clone();
    let spawned = scope
        .spawn(async move {
            r.sleep(ms(10)).await;
            Ok(Bomb::armed(0))
        })
        .await;
    assert!(spawned.is_ok());
    let next = within(&rt, SEC, "next, over a discarded bomb", scope.next()).await;
    assert!(next.is_none(), "no report: the Ok was discarded");

    // Spawns that wait for one of the two slots while bombs go off.
    let mut rng = SplitMix64::new(0x5C0);
    let (mut oks, mut errs) = (1u64, 0u64);
    for id in 1..=40u32 {
        let kind = draw(&mut rng, 3);
        let delay = if draw(&mut rng, 9) == 0 {
            HOUR
        } else {
            ms(draw(&mut rng, 30))
        };
        if kind == 3 {
            errs += 1;
        } else {
            oks += 1;
        }
        let r = rt.clone();
        let spawned = within(
            &rt,
            HOUR * 2,
            "a spawn waiting for a slot",
            scope.spawn(async move {
                r.sleep(delay).await;
                match kind {
                    0 | 1 => Ok(Bomb::armed(id)),
                    2 => Ok(Bomb::dud(id)),
                    _ => Err(format!("child {id} failed")),
                }
            }),
        )
        .await;
        assert!(spawned.is_ok(), "spawn {id} was refused");
    }
    let report = within(&rt, HOUR * 2, "join over discarded bombs", scope.join()).await;
    assert_eq!(report.spawned, 41);
    assert_eq!(
        (
            report.succeeded,
            report.failed,
            report.panicked,
            report.aborted
        ),
        (oks, errs, 0, 0),
        "a value's panicking Drop still counts as a success"
    );
    assert!(report.is_balanced());
    assert_eq!(report.children.len() as u64, errs, "only failures kept");
    assert!(
        report.cancel_reason.is_none(),
        "collect-all: nothing cancels"
    );

    // Fail-fast: bombs are successes, so nothing fails the scope fast.
    let scope = Scope::builder()
        .runtime(rt.clone())
        .discard_ok()
        .limit(1)
        .build::<Bomb, String>()
        .unwrap();
    for id in 0..10 {
        let r = rt.clone();
        let spawned = within(
            &rt,
            SEC,
            "a fail-fast spawn",
            scope.spawn(async move {
                r.sleep(ms(3)).await;
                Ok(Bomb::armed(id))
            }),
        )
        .await;
        assert!(
            spawned.is_ok(),
            "fail-fast scope refused spawn {id}: was it cancelled?"
        );
    }
    let report = within(&rt, SEC, "fail-fast join", scope.join()).await;
    assert_eq!(
        (report.spawned, report.succeeded, report.panicked),
        (10, 10, 0)
    );
    assert!(report.cancel_reason.is_none(), "{:?}", report.cancel_reason);
    assert!(report.first_failure.is_none());
}

#[test]
fn discarded_bombs_wake_every_waiter_on_every_runtime() {
    hang::without_hanging("discarded values panicking on drop", || {
        on_every_runtime!(discarded_bombs_wake_every_waiter);
    });
}

/// Docs (`ScopeBuilder::discard_ok`): "the panic goes on to the child's task ... (for a
/// `LocalScope`, to the owner polling it)", and "the child still counts as succeeded". The
/// owner catches the panic out of `next`, and the scope goes on: its other child still runs to
/// its end, and the join reports both as successes.
#[test]
fn a_local_scope_owner_catches_the_bomb_and_the_scope_goes_on() {
    hang::without_hanging("a local scope over a discarded bomb", || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut scope = Scope::builder()
                .runtime(Tokio)
                .discard_ok()
                .build_local::<Bomb, ()>()
                .unwrap();
            let finished = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&finished);
            assert!(
                scope
                    .spawn(async {
                        tokio::time::sleep(ms(5)).await;
                        Ok(Bomb::armed(1))
                    })
                    .await
                    .is_ok()
            );
            assert!(
                scope
                    .spawn(async move {
                        tokio::time::sleep(ms(50)).await;
                        flag.store(true, SeqCst);
                        Ok(Bomb::dud(2))
                    })
                    .await
                    .is_ok()
            );
            let caught = AssertUnwindSafe(scope.next()).catch_unwind().await;
            assert!(
                caught.is_err(),
                "the bomb's panic reaches the owner polling: {:?}",
                caught.as_ref().ok()
            );
            let report = scope.join().await;
            assert!(finished.load(SeqCst), "the other child ran to its end");
            assert_eq!((report.spawned, report.succeeded), (2, 2));
            assert_eq!((report.failed, report.panicked, report.aborted), (0, 0, 0));
            assert!(report.is_balanced());
        });
    });
}

// === 3. WorkerPool: a job's panicking destructors do not kill its worker ======================

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Job {
    /// Returns an armed bomb at once (its handle is always dropped: the worker drops it).
    QuickBomb(u32),
    /// Holds an armed bomb past the timeout (its future is dropped by the timeout).
    SlowBomb(u32),
    /// Returns a dud.
    Plain(u32),
}

/// Docs (`WorkerPool`): "A panicking job is reported as Exit::Panicked and the worker goes on
/// with the next job ... So it does when a job's destructors panic: those of a job its timeout
/// drops, or of a value whose handle was dropped (the job keeps the exit it was reported with,
/// and the panic is not reported)"; "submitted = completed + failed + handed back, always".
/// One worker, forty seeded jobs, on every runtime.
async fn one_worker_survives_seeded_destructor_panics<R: Runtime>(rt: Clocked<R>) {
    let r = rt.clone();
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(64)
        .job_timeout(SEC)
        .runtime(rt.clone())
        .start(move |job: Job| {
            let r = r.clone();
            async move {
                match job {
                    Job::QuickBomb(id) => Bomb::armed(id),
                    Job::SlowBomb(id) => {
                        let held = Bomb::armed(id);
                        r.sleep(HOUR).await;
                        std::mem::forget(held);
                        Bomb::dud(id)
                    }
                    Job::Plain(id) => {
                        r.sleep(if id == 1_000 { SEC } else { ms(2) }).await;
                        Bomb::dud(id)
                    }
                }
            }
        })
        .unwrap();
    // A gate holds the one worker until every handle below was dropped or kept: a value
    // delivered before its handle is dropped would be dropped by the test itself.
    let gate = pool.submit(Job::Plain(1_000)).await.unwrap();
    let mut rng = SplitMix64::new(0x9001);
    let mut kept = vec![(Job::Plain(1_000), gate)];
    let (mut completed, mut failed) = (1u64, 0u64);
    for id in 0..40u32 {
        let job = match draw(&mut rng, 2) {
            0 => Job::QuickBomb(id),
            1 => Job::SlowBomb(id),
            _ => Job::Plain(id),
        };
        let handle = pool.submit(job).await.unwrap();
        match job {
            Job::QuickBomb(_) => {
                completed += 1;
                drop(handle);
            }
            Job::SlowBomb(_) => {
                failed += 1;
                if draw(&mut rng, 1) == 0 {
                    drop(handle);
                } else {
                    kept.push((job, handle));
                }
            }
            Job::Plain(_) => {
                completed += 1;
                kept.push((job, handle));
            }
        }
    }
    // The last job: a worker lost to a destructor would leave it waiting for ever.
    let last = pool.submit(Job::Plain(99)).await.unwrap();
    completed += 1;
    for (job, handle) in kept {
        match (job, within(&rt, HOUR * 100, "a job", handle).await) {
            (Job::SlowBomb(_), Exit::Err(Elapsed)) => {}
            (Job::Plain(id), Exit::Ok(value)) => assert_eq!((value.armed, value.id), (false, id)),
            (job, other) => panic!("{job:?} ended as {other:?}"),
        }
    }
    match within(&rt, HOUR * 100, "the last job", last).await {
        Exit::Ok(value) => assert_eq!(value.id, 99),
        other => panic!("the worker went on: {other:?}"),
    }
    let report = pool.shutdown(SEC).await;
    assert_eq!(
        (
            report.submitted,
            report.completed,
            report.failed,
            report.aborted
        ),
        (42, completed, failed, 0),
        "each job keeps the exit it was reported with"
    );
    assert!(report.handed_back.is_empty());
}

#[test]
fn one_worker_survives_seeded_destructor_panics_on_every_runtime() {
    hang::without_hanging("a pool whose job destructors panic", || {
        on_every_runtime!(one_worker_survives_seeded_destructor_panics);
    });
}

/// Docs (`WorkerPool`): "So it does when a job's destructors panic: ... of a value whose
/// handle was dropped". A job that panics with a payload that itself panics on drop, its handle
/// dropped: the worker drops `Exit::Panicked(payload)`, and must live on for the next job.
async fn a_panic_payload_that_panics_on_drop_leaves_the_worker<R: Runtime>(rt: Clocked<R>) {
    let r = rt.clone();
    let pool = WorkerPool::builder()
        .workers(1)
        .queue(8)
        .runtime(rt.clone())
        .start(move |n: u32| {
            let r = r.clone();
            async move {
                if n == 1_000 {
                    // The gate: holds the one worker while the handles are dropped.
                    r.sleep(SEC).await;
                } else if n.is_multiple_of(2) {
                    std::panic::panic_any(Bomb::armed(n));
                }
                n
            }
        })
        .unwrap();
    let gate = pool.submit(1_000).await.unwrap();
    let mut odd = Vec::new();
    for n in 0..6u32 {
        let handle = pool.submit(n).await.unwrap();
        if n % 2 == 0 {
            drop(handle);
        } else {
            odd.push((n, handle));
        }
    }
    assert!(matches!(
        within(&rt, SEC * 2, "the gate", gate).await,
        Exit::Ok(1_000)
    ));
    for (n, handle) in odd {
        match within(&rt, SEC, "an odd job", handle).await {
            Exit::Ok(v) => assert_eq!(v, n),
            other => panic!("job {n}: {other:?}"),
        }
    }
    let report = pool.shutdown(SEC).await;
    assert_eq!(
        (
            report.submitted,
            report.completed,
            report.failed,
            report.aborted
        ),
        (7, 4, 3, 0)
    );
}

#[test]
fn a_panic_payload_that_panics_on_drop_leaves_the_worker_on_every_runtime() {
    hang::without_hanging("a pool job's panic payload panics on drop", || {
        on_every_runtime!(a_panic_payload_that_panics_on_drop_leaves_the_worker);
    });
}

// === 4. HealthChecker: a panicking probe is Unhealthy and the checks go on =====================

/// Docs (`Health::Unhealthy`): "`probe panicked: ...` for a probe that panicked, when called or
/// while it ran"; (`Health::TimedOut`): "The last probe did not answer within the timeout";
/// (`HealthChecker`): "the first probe starts as soon as the checker's future is first polled
/// ... later probes start at `first + k × period` ... Each finished probe publishes its verdict
/// with the instant it finished". Every way a probe can panic, with exact virtual instants.
async fn probes_panicking_every_way<R: Runtime>(rt: Clocked<R>) {
    let token = CancellationToken::new();
    let calls = Arc::new(AtomicU32::new(0));
    let (r, counter) = (rt.clone(), Arc::clone(&calls));
    let (health, checker) = HealthChecker::builder()
        .period(SEC)
        .timeout(ms(500))
        .runtime(rt.clone())
        .start(&token, move || {
            let n = counter.fetch_add(1, SeqCst);
            let r = r.clone();
            match n {
                0 => panic!("called {n}"),
                3 => std::panic::panic_any(format!("owned {n}")),
                _ => {}
            }
            async move {
                match n {
                    1 => {
                        r.sleep(ms(200)).await;
                        panic!("polled {n}");
                    }
                    2 => {
                        r.sleep(SEC * 2).await;
                        panic!("never reached: the timeout comes first");
                    }
                    5 => {
                        r.sleep(ms(100)).await;
                        Err(String::from("down"))
                    }
                    6 => {
                        r.sleep(ms(300)).await;
                        let late = format!("late {n}");
                        panic!("{late}");
                    }
                    _ => Ok(()),
                }
            }
        })
        .unwrap();
    let t0 = rt.now();
    let running = rt.spawn(checker);
    let panicked = |what: &str| Health::Unhealthy(format!("probe panicked: {what}"));
    let mut seen = Health::Unknown;
    let mut history = Vec::new();
    for _ in 0..8 {
        seen = within(&rt, SEC * 3, "the next verdict", health.changed(&seen)).await;
        let (latest, at) = health.latest();
        assert_eq!(latest, seen);
        history.push((seen.clone(), at.map(|at| at - t0)));
    }
    assert_eq!(history[0], (panicked("called 0"), Some(Duration::ZERO)));
    assert_eq!(history[1], (panicked("polled 1"), Some(ms(1_200))));
    assert_eq!(history[2], (Health::TimedOut, Some(ms(2_500))));
    assert_eq!(history[3], (panicked("owned 3"), Some(ms(3_000))));
    assert_eq!(history[4], (Health::Healthy, Some(ms(4_000))));
    assert_eq!(
        history[5],
        (Health::Unhealthy("down".into()), Some(ms(5_100)))
    );
    assert_eq!(history[6], (panicked("late 6"), Some(ms(6_300))));
    assert_eq!(history[7], (Health::Healthy, Some(ms(7_000))));
    // And the checks go on: at 8, 9, 10 s, all healthy, then a stop.
    rt.sleep(ms(3_500)).await;
    assert_eq!(
        calls.load(SeqCst),
        11,
        "a probe every period since the start"
    );
    token.cancel("done");
    let reason = within(&rt, SEC, "the checker to stop", running)
        .await
        .unwrap();
    assert_eq!(reason.as_str(), "done");
}

#[test]
fn probes_panicking_every_way_on_every_runtime() {
    hang::without_hanging("a health checker whose probes panic", || {
        on_every_runtime!(probes_panicking_every_way);
    });
}

/// Extreme config: a period and a timeout of `u64::MAX` nanoseconds (about 584 years). The
/// first probe panics; the checker lives on through the centuries-long idle gap and publishes
/// the next probe's verdict at exactly `first + period`.
async fn a_panicking_probe_then_centuries_of_idle<R: Runtime>(rt: Clocked<R>) {
    let token = CancellationToken::new();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let (health, checker) = HealthChecker::builder()
        .period(MAX_NS)
        .timeout(MAX_NS)
        .runtime(rt.clone())
        .start(&token, move || {
            if counter.fetch_add(1, SeqCst) == 0 {
                panic!("first");
            }
            async { Ok::<(), String>(()) }
        })
        .unwrap();
    let t0 = rt.now();
    let running = rt.spawn(checker);
    let first = health.changed(&Health::Unknown).await;
    assert_eq!(first, Health::Unhealthy("probe panicked: first".into()));
    let second = health.changed(&first).await;
    assert_eq!(second, Health::Healthy);
    assert_eq!(health.latest().1.map(|at| at - t0), Some(MAX_NS));
    token.cancel("bye");
    assert_eq!(running.await.unwrap().as_str(), "bye");
    assert_eq!(calls.load(SeqCst), 2);
}

#[test]
fn a_panicking_probe_then_centuries_of_idle_on_every_runtime() {
    hang::without_hanging("a panicking probe then 584 years", || {
        on_every_runtime!(a_panicking_probe_then_centuries_of_idle);
    });
}

/// Docs (`Health::Unhealthy`): "The last probe failed, with its message (`probe panicked:
/// ...` for a probe that panicked, when called or while it ran)". A probe that panics with a
/// payload that is not a string (`panic_any`) is still published in that documented shape.
async fn a_probe_panicking_with_a_non_string_payload<R: Runtime>(rt: Clocked<R>) {
    let token = CancellationToken::new();
    let calls = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&calls);
    let (health, checker) = HealthChecker::builder()
        .period(SEC)
        .runtime(rt.clone())
        .start(&token, move || {
            let n = counter.fetch_add(1, SeqCst);
            async move {
                if n == 0 {
                    std::panic::panic_any(42_u32);
                }
                Ok::<(), String>(())
            }
        })
        .unwrap();
    let running = rt.spawn(checker);
    let first = within(
        &rt,
        SEC,
        "the first verdict",
        health.changed(&Health::Unknown),
    )
    .await;
    let second = within(&rt, SEC * 2, "the second verdict", health.changed(&first)).await;
    token.cancel("done");
    assert_eq!(running.await.unwrap().as_str(), "done");
    assert_eq!(second, Health::Healthy, "the checks go on");
    match first {
        Health::Unhealthy(why) => assert!(
            why.starts_with("probe panicked: "),
            "documented as `probe panicked: ...`, got {why:?}"
        ),
        other => panic!("a panicking probe is unhealthy: {other:?}"),
    }
}

// Found by this file and fixed: a non-string payload was published as `probe panicked`,
// without the documented `: ...`; it now reads `probe panicked: (its payload is not a
// string)`.
#[test]
fn a_probe_panicking_with_a_non_string_payload_on_every_runtime() {
    hang::without_hanging("a probe panicking with a non-string payload", || {
        on_every_runtime!(a_probe_panicking_with_a_non_string_payload);
    });
}

// === 5. follow_on: a check lost to its runtime goes on where it began ==========================

const PERIOD: Duration = Duration::from_millis(100);

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Docs (`Follow`): "So is a check lost to a panic or to its runtime ...: the next check goes
/// on from where the lost one began, in the same file if the path still names it"; "It starts
/// where the file is when the follower is built ... at its end". The very first check is lost:
/// it began at the end the follower was built at, so the lines already in the file never come.
/// With `from_start`, they come once each.
async fn the_lost_first_check_resumes_where_the_follower_started<R: Runtime>(rt: Clocked<R>) {
    for from_start in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        std::fs::write(&path, "old 1\nold 2\n").unwrap();
        let losing = LosesBlocking {
            inner: rt.clone(),
            jobs: Arc::new(AtomicUsize::new(0)),
            lose: |job| job == 0,
        };
        let mut lines = follow_on(&losing, &path, PERIOD, 1024, from_start).unwrap();
        append(&path, "new 1\n");
        let lost = lines.next().await.unwrap();
        assert!(lost.is_err(), "the lost check is an item: {lost:?}");
        let mut got = Vec::new();
        let expected: &[&str] = if from_start {
            &["old 1", "old 2", "new 1"]
        } else {
            &["new 1"]
        };
        for _ in 0..expected.len() {
            got.push(String::from_utf8(lines.next().await.unwrap().unwrap()).unwrap());
        }
        assert_eq!(got, expected, "from_start {from_start}");
        let more = lines.next().timeout_on(&rt, SEC * 5).await;
        assert!(
            more.is_err(),
            "from_start {from_start}: nothing again: {more:?}"
        );
    }
}

#[test]
fn the_lost_first_check_resumes_where_the_follower_started_on_every_runtime() {
    hang::without_hanging("a follower whose first check is lost", || {
        on_every_runtime!(the_lost_first_check_resumes_where_the_follower_started);
    });
}

/// The checks a seeded runtime loses: about a third of them (with this seed, jobs 3, 8, 13,
/// 15, 18, 21, 24, 26, 27, 36, ...: 26 and 27 in a row).
fn seeded_lost_check(job: usize) -> bool {
    SplitMix64::new(0xF0110 ^ (job as u64).wrapping_mul(0x9E37_79B9))
        .next_u64()
        .is_multiple_of(3)
}

/// The same, but never two in a row.
fn seeded_lost_check_alone(job: usize) -> bool {
    seeded_lost_check(job) && (job == 0 || !seeded_lost_check(job - 1))
}

/// Docs (`Follow`): "the next check goes on from where the lost one began"; "A partial last
/// line is held until its newline arrives"; "An I/O error is delivered as an item". Thirty
/// rounds of seeded appends, lines split at seeded points across rounds, the checks `lose`
/// picks lost: every complete line comes exactly once, in order.
async fn seeded_lost_checks_deliver_each_line_once<R: Runtime>(
    rt: Clocked<R>,
    seeded_lost_check: fn(usize) -> bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(&path, "before the follower\n").unwrap();
    let jobs = Arc::new(AtomicUsize::new(0));
    let losing = LosesBlocking {
        inner: rt.clone(),
        jobs: Arc::clone(&jobs),
        lose: seeded_lost_check,
    };
    let mut lines = follow_on(&losing, &path, PERIOD, 1024, false).unwrap();
    let mut rng = SplitMix64::new(0x7A11);
    let mut expected = Vec::new();
    let mut written = String::new();
    let mut delivered = Vec::new();
    let mut errors = 0usize;
    let mut counter = 0u32;
    for round in 0..30 {
        // Some complete lines and maybe the head of the next: appended in seeded pieces.
        for _ in 0..=draw(&mut rng, 3) {
            let pad = "x".repeat(draw(&mut rng, 120) as usize);
            let line = format!("line {counter} {pad}");
            counter += 1;
            written.push_str(&line);
            written.push('\n');
            expected.push(line);
        }
        let cut = if draw(&mut rng, 1) == 0 {
            written.len()
        } else {
            // Keep a seeded tail (inside the last line) for the next round.
            let last_start = written[..written.len() - 1]
                .rfind('\n')
                .map_or(0, |i| i + 1);
            last_start + draw(&mut rng, (written.len() - 1 - last_start) as u64) as usize
        };
        let (now, later) = written.split_at(cut);
        append(&path, now);
        let later = later.to_owned();
        let complete = expected.len() - usize::from(!later.is_empty());
        while delivered.len() < complete {
            match lines.next().await.unwrap() {
                Ok(line) => delivered.push(String::from_utf8(line).unwrap()),
                Err(_) => errors += 1,
            }
        }
        assert_eq!(delivered, expected[..complete], "round {round}");
        written = later;
    }
    append(&path, &written);
    while delivered.len() < expected.len() {
        match lines.next().await.unwrap() {
            Ok(line) => delivered.push(String::from_utf8(line).unwrap()),
            Err(_) => errors += 1,
        }
    }
    assert_eq!(delivered, expected, "each line once, in order");
    let lost = (0..jobs.load(SeqCst))
        .filter(|&j| seeded_lost_check(j))
        .count();
    assert!(
        errors >= 1 && errors <= lost,
        "{errors} error items for {lost} lost checks"
    );
    let more = lines.next().timeout_on(&rt, SEC * 5).await;
    assert!(
        matches!(more, Err(_) | Ok(Some(Err(_)))),
        "no line again: {more:?}"
    );
}

async fn seeded_lost_checks_some_in_a_row<R: Runtime>(rt: Clocked<R>) {
    seeded_lost_checks_deliver_each_line_once(rt, seeded_lost_check).await;
}

async fn seeded_lost_checks_never_two_in_a_row<R: Runtime>(rt: Clocked<R>) {
    seeded_lost_checks_deliver_each_line_once(rt, seeded_lost_check_alone).await;
}

// Found by this file and fixed: with this seed the runtime loses checks 26 and 27 back to
// back, and the check after them read the file from its start again (every line delivered
// twice, and a line from before the follower's start). A run of losses now resumes where the
// first of them began. `two_lost_checks_in_a_row_on_every_runtime` is the minimal case.
#[test]
fn seeded_lost_checks_deliver_each_line_once_on_every_runtime() {
    hang::without_hanging("a follower losing seeded checks", || {
        on_every_runtime!(seeded_lost_checks_some_in_a_row);
    });
}

#[test]
fn seeded_lost_checks_never_two_in_a_row_deliver_each_line_once_on_every_runtime() {
    hang::without_hanging(
        "a follower losing seeded checks, never two in a row",
        || {
            on_every_runtime!(seeded_lost_checks_never_two_in_a_row);
        },
    );
}

/// Docs (`Follow`): "the next check goes on from where the lost one began, in the same file if
/// the path still names it"; "Truncation in place ...: a check notices it when the file is
/// shorter than what was read ...; the file is then read again from its start". A check is
/// lost, then the file is truncated and rewritten: the new contents come, and nothing from
/// before.
async fn a_lost_check_then_a_truncation<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(&path, "alpha line\nbeta line\n").unwrap();
    let losing = LosesBlocking {
        inner: rt.clone(),
        jobs: Arc::new(AtomicUsize::new(0)),
        lose: |job| job == 1,
    };
    let mut lines = follow_on(&losing, &path, PERIOD, 1024, true).unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"alpha line");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"beta line");
    append(&path, "gamma, lost with the truncation\n");
    assert!(lines.next().await.unwrap().is_err(), "the lost check");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&path, "fresh\n");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"fresh");
    let more = lines.next().timeout_on(&rt, SEC * 5).await;
    assert!(more.is_err(), "nothing more: {more:?}");
}

#[test]
fn a_lost_check_then_a_truncation_on_every_runtime() {
    hang::without_hanging("a lost check, then a truncation", || {
        on_every_runtime!(a_lost_check_then_a_truncation);
    });
}

/// Docs (`Follow`): "So is a check lost to a panic or to its runtime (a blocking job
/// cancelled): the next check goes on from where the lost one began, in the same file if the
/// path still names it". Two checks lost in a row: the second began where the first did, so
/// the third goes on from there too — not from the start of the file.
async fn two_lost_checks_in_a_row<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(&path, "old 1\nold 2\n").unwrap();
    let losing = LosesBlocking {
        inner: rt.clone(),
        jobs: Arc::new(AtomicUsize::new(0)),
        lose: |job| job == 1 || job == 2,
    };
    let mut lines = follow_on(&losing, &path, PERIOD, 1024, false).unwrap();
    append(&path, "new 1\n");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"new 1");
    append(&path, "new 2\n");
    assert!(lines.next().await.unwrap().is_err(), "the first lost check");
    assert!(
        lines.next().await.unwrap().is_err(),
        "the second lost check"
    );
    append(&path, "new 3\n");
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(String::from_utf8(lines.next().await.unwrap().unwrap()).unwrap());
    }
    assert_eq!(
        got,
        ["new 2", "new 3"],
        "nothing delivered before comes again"
    );
    let more = lines.next().timeout_on(&rt, SEC * 5).await;
    assert!(more.is_err(), "nothing more: {more:?}");
}

// Found by this file and fixed: after a second loss in a row the next check opened the path
// from its start ("old 1", "old 2" delivered though the follower was built at the end): a
// check that resumes now begins where the lost one did, so a run of losses resumes there.
#[test]
fn two_lost_checks_in_a_row_on_every_runtime() {
    hang::without_hanging("two lost checks in a row", || {
        on_every_runtime!(two_lost_checks_in_a_row);
    });
}

// === 6. Supervisor: exits while siblings stop are dated when they happened =====================

/// Supervisor events, in the order the hook saw them.
type Events = Arc<Mutex<Vec<SupervisorEvent>>>;

fn event_log() -> (Events, impl Fn(&SupervisorEvent) + Send + Sync + 'static) {
    let log: Events = Arc::default();
    let sink = Arc::clone(&log);
    (log, move |e: &SupervisorEvent| {
        sink.lock().unwrap().push(e.clone())
    })
}

fn exited(log: &Events) -> Vec<(String, Exit)> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            SupervisorEvent::Exited { child, exit } => Some((child.to_string(), exit.clone())),
            _ => None,
        })
        .collect()
}

fn restarting(log: &Events) -> Vec<(String, u32)> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            SupervisorEvent::Restarting {
                child,
                restarts_in_period,
                ..
            } => Some((child.to_string(), *restarts_in_period)),
            _ => None,
        })
        .collect()
}

/// A child that fails `after` its first start, and on later starts runs until told to stop.
fn fails_once<R: Runtime>(rt: &R, name: &'static str, after: Duration) -> ChildSpec {
    let rt = rt.clone();
    let runs = Arc::new(AtomicU32::new(0));
    ChildSpec::new(name, move |stop: CancellationToken| {
        let rt = rt.clone();
        let first = runs.fetch_add(1, SeqCst) == 0;
        async move {
            if first {
                rt.sleep(after).await;
                Err::<(), String>(name.to_owned())
            } else {
                stop.cancelled().await;
                Ok(())
            }
        }
    })
}

/// A child that ignores its token: stopping it takes its whole shutdown timeout.
fn stubborn(name: &'static str, timeout: Duration) -> ChildSpec {
    ChildSpec::new(name, |_stop| {
        std::future::pending::<Result<(), Infallible>>()
    })
    .shutdown_timeout(timeout)
}

fn fixed(delay: Duration) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(u32::MAX)
        .build()
        .unwrap()
}

/// Docs (`SupervisorEvent::Restarting::restarts_in_period`): "Restarts within the intensity
/// period, this one included"; (`intensity`): "A restart is dated by the exit that caused it".
/// Rest-for-one: b fails at 1 s and c takes its 5 s timeout to stop; a fails at 2 s meanwhile.
/// a's restart is dated 2 s: two restarts in the 3 s period (dated when handled, at 6 s, b's
/// would have left the window and it would read 1).
async fn restarts_in_period_counts_an_exit_seen_while_siblings_stop<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = event_log();
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .strategy(Strategy::RestForOne)
        .intensity(5, Duration::from_secs(3))
        .backoff(fixed(ms(1)))
        .on_event(hook)
        .child(fails_once(&rt, "a", SEC * 2))
        .child(fails_once(&rt, "b", SEC))
        .child(stubborn("c", SEC * 5))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let (stopper, r) = (stop.clone(), rt.clone());
    drop(rt.spawn(async move {
        r.sleep(SEC * 60).await;
        stopper.cancel("done");
    }));
    let report = within(&rt, HOUR, "the supervisor", supervisor.run(stop))
        .await
        .expect("no escalation under 5 restarts in 3 s");
    assert_eq!(report.ended, Ended::Stopped);
    assert_eq!(
        restarting(&log),
        [("b".to_owned(), 1), ("a".to_owned(), 2)],
        "a's restart is dated at 2 s, within 3 s of b's"
    );
    assert_eq!(
        exited(&log),
        [
            ("b".to_owned(), Exit::Err("b".into())),
            ("a".to_owned(), Exit::Err("a".into()))
        ]
    );
    assert_eq!(report.restarts, 2);
}

#[test]
fn restarts_in_period_counts_an_exit_seen_while_siblings_stop_on_every_runtime() {
    hang::without_hanging("a supervisor busy stopping siblings", || {
        on_every_runtime!(restarts_in_period_counts_an_exit_seen_while_siblings_stop);
    });
}

/// Docs (`intensity`): "A restart is dated by the exit that caused it, and the window is
/// closed, as OTP's: an exit exactly `period` after an earlier restart still counts that
/// restart." b fails at 1 s (the one restart allowed in 3 s); c takes its 5 s to stop; a fails
/// at exactly 4 s, meanwhile: dated 4 s, it is the second restart in the closed window and the
/// supervisor escalates on a.
async fn an_exit_at_the_window_edge_while_siblings_stop_escalates<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = event_log();
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .strategy(Strategy::RestForOne)
        .intensity(1, Duration::from_secs(3))
        .backoff(fixed(ms(1)))
        .on_event(hook)
        .child(fails_once(&rt, "a", SEC * 4))
        .child(fails_once(&rt, "b", SEC))
        .child(stubborn("c", SEC * 5))
        .build()
        .unwrap();
    let escalation = within(
        &rt,
        HOUR,
        "the supervisor",
        supervisor.run(CancellationToken::new()),
    )
    .await
    .expect_err("two restarts within a closed 3 s window");
    assert_eq!(&*escalation.child, "a");
    assert_eq!((escalation.max_restarts, escalation.period), (1, SEC * 3));
    assert_eq!(escalation.report.ended, Ended::Escalated);
    let told: Vec<String> = exited(&log).into_iter().map(|(c, _)| c).collect();
    assert_eq!(told, ["b", "a"]);
}

#[test]
fn an_exit_at_the_window_edge_while_siblings_stop_escalates_on_every_runtime() {
    hang::without_hanging("an exit at the window's edge", || {
        on_every_runtime!(an_exit_at_the_window_edge_while_siblings_stop_escalates);
    });
}

/// Docs (`SupervisorEvent`): "Something that happened under a supervisor, in order";
/// (`Escalation::child`): "The child whose exit exceeded the intensity". Two children outside
/// the restart group fail while c is being stopped: a1 at 1.5 s, then a2 at 2 s (a2 comes
/// first in the order added). Their exits are told in the order they happened, and the third
/// restart within 3 s (two allowed) is a2's, at 2 s.
async fn two_exits_seen_while_siblings_stop_are_told_in_order<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = event_log();
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .strategy(Strategy::RestForOne)
        .intensity(2, Duration::from_secs(3))
        .backoff(fixed(ms(1)))
        .on_event(hook)
        .child(fails_once(&rt, "a2", SEC * 2))
        .child(fails_once(&rt, "a1", ms(1_500)))
        .child(fails_once(&rt, "b", SEC))
        .child(stubborn("c", SEC * 5))
        .build()
        .unwrap();
    let escalation = within(
        &rt,
        HOUR,
        "the supervisor",
        supervisor.run(CancellationToken::new()),
    )
    .await
    .expect_err("three restarts within 3 s");
    let told: Vec<String> = exited(&log).into_iter().map(|(c, _)| c).collect();
    let restarts = restarting(&log);
    assert_eq!(
        told,
        ["b", "a1", "a2"],
        "exits told in the order they happened (restarting: {restarts:?}, escalated on {})",
        escalation.child
    );
    assert_eq!(
        &*escalation.child, "a2",
        "the third exit in time is one too many"
    );
}

// Found by this file and fixed: the exits seen during a stop were handled in the order the
// children were added (told as b, a2, a1; escalation on a1). They are now handled, and told,
// in the order they happened.
#[test]
fn two_exits_seen_while_siblings_stop_are_told_in_order_on_every_runtime() {
    hang::without_hanging("two exits while siblings stop", || {
        on_every_runtime!(two_exits_seen_while_siblings_stop_are_told_in_order);
    });
}

/// Docs (`SupervisorReport::stopped`): "The children it stopped at the end"; (`restarts`):
/// "one per SupervisorEvent::Restarting"; (`Restart::Temporary`): "Never restarted". The stop
/// comes at 3 s while c (5 s to stop) is being stopped for b's restart; a failed at 2 s and
/// the temporary t ended well at 2.5 s, both meanwhile: each is told as an exit, once, neither
/// is in the children stopped at the end, and t is never restarted.
async fn a_stop_during_a_stop_tells_every_exit_seen<R: Runtime>(rt: Clocked<R>) {
    let (log, hook) = event_log();
    let r = rt.clone();
    let temporary = ChildSpec::new("t", move |_stop| {
        let r = r.clone();
        async move {
            r.sleep(ms(2_500)).await;
            Ok::<(), Infallible>(())
        }
    })
    .restart(Restart::Temporary);
    let supervisor = Supervisor::builder()
        .runtime(rt.clone())
        .strategy(Strategy::RestForOne)
        .intensity(10, Duration::from_secs(3))
        .backoff(fixed(ms(1)))
        .on_event(hook)
        .child(fails_once(&rt, "a", SEC * 2))
        .child(temporary)
        .child(fails_once(&rt, "b", SEC))
        .child(stubborn("c", SEC * 5))
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let (stopper, r) = (stop.clone(), rt.clone());
    drop(rt.spawn(async move {
        r.sleep(SEC * 3).await;
        stopper.cancel("deploy");
    }));
    let report = within(&rt, HOUR, "the supervisor", supervisor.run(stop))
        .await
        .unwrap();
    assert_eq!(report.ended, Ended::Stopped);
    let told = exited(&log);
    assert_eq!(
        told,
        [
            ("b".to_owned(), Exit::Err("b".into())),
            ("a".to_owned(), Exit::Err("a".into())),
            ("t".to_owned(), Exit::Ok(())),
        ],
        "each exit told once, in the order it happened"
    );
    let stopped: Vec<&str> = report.stopped.iter().map(|s| &*s.name).collect();
    assert!(
        !stopped.contains(&"a") && !stopped.contains(&"t"),
        "they ended on their own before the stop: {stopped:?}"
    );
    let restarts = restarting(&log);
    assert_eq!(report.restarts, restarts.len() as u64, "{restarts:?}");
    assert!(
        restarts.iter().all(|(c, _)| c != "t"),
        "temporary: never restarted"
    );
    let started_t = log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, SupervisorEvent::Started { child, .. } if &**child == "t"))
        .count();
    assert_eq!(started_t, 1);
}

#[test]
fn a_stop_during_a_stop_tells_every_exit_seen_on_every_runtime() {
    hang::without_hanging("a stop during a stop", || {
        on_every_runtime!(a_stop_during_a_stop_tells_every_exit_seen);
    });
}

// === 7. listeners that panic lose no capacity ==================================================

/// Docs (`telemetry::Event`): "A listener that panics unwinds into the call it was told of ...
/// and the policy loses nothing to it: a bulkhead's (or adaptive limiter's) slot granted to a
/// queued caller is given back"; (`KeyedBulkhead`): "A key with no permit out, no waiter queued
/// and no handle from get held is indistinguishable from a key never seen, so such keys are
/// forgotten ... by retain_in_use". Keyed bulkheads and keyed adaptive limiters: every key whose
/// waiter's listener panicked is whole again, and so forgettable.
async fn keyed_tables_lose_nothing_to_a_panicking_listener<R: Runtime>(rt: Clocked<R>) {
    let bulkheads = Bulkhead::builder(1)
        .max_queue(4)
        .max_wait(None)
        .on_event(panics_when_waited)
        .runtime(rt.clone())
        .keyed()
        .max_keys(16)
        .build::<u32>()
        .unwrap();
    for key in 0..5u32 {
        let held = bulkheads.try_acquire(&key).unwrap();
        let waiter = rt.spawn(
            bulkheads
                .acquire_before(&key, Deadline::none())
                .map(|r| r.map(drop)),
        );
        let handle = bulkheads.get(&key).unwrap();
        until(&rt, SEC, "the waiter queues", || handle.queued() == 1).await;
        drop(handle);
        drop(held);
        let joined = within(&rt, SEC, "the waiter", waiter).await;
        assert!(
            matches!(joined, Err(JoinError::Panicked(_))),
            "key {key}: {joined:?}"
        );
        assert_eq!(
            bulkheads.in_flight(&key),
            0,
            "key {key}: the granted slot came back"
        );
        assert!(
            bulkheads.try_acquire(&key).is_ok(),
            "key {key}: its one slot is free"
        );
    }
    assert_eq!(
        bulkheads.retain_in_use(),
        5,
        "every key is whole, so forgotten"
    );

    let limiters = AdaptiveLimiter::builder(FixedLimit(1))
        .max_queue(4)
        .max_wait(None)
        .on_event(panics_when_waited)
        .runtime(rt.clone())
        .keyed()
        .max_keys(16)
        .build::<u32>()
        .unwrap();
    for key in 0..5u32 {
        let held = limiters.try_acquire(&key).unwrap();
        let waiter = rt.spawn(
            limiters
                .acquire_before(&key, Deadline::none())
                .map(|r| r.map(drop)),
        );
        let handle = limiters.get(&key).unwrap();
        until(&rt, SEC, "the waiter queues", || handle.queued() == 1).await;
        drop(handle);
        held.success();
        let joined = within(&rt, SEC, "the waiter", waiter).await;
        assert!(
            matches!(joined, Err(JoinError::Panicked(_))),
            "key {key}: {joined:?}"
        );
        assert_eq!(
            limiters.in_flight(&key),
            0,
            "key {key}: the granted slot came back"
        );
        let again = limiters.try_acquire(&key);
        assert!(again.is_ok(), "key {key}: its one slot is free");
        drop(again);
    }
    assert_eq!(
        limiters.retain_in_use(),
        5,
        "every key is whole, so forgotten"
    );
}

#[test]
fn keyed_tables_lose_nothing_to_a_panicking_listener_on_every_runtime() {
    hang::without_hanging("keyed tables with panicking listeners", || {
        on_every_runtime!(keyed_tables_lose_nothing_to_a_panicking_listener);
    });
}

/// The inner service of the tower tests: answers after 10 ms of the runtime's time.
fn slow_echo<R: Runtime>(
    rt: &R,
) -> impl tower_service::Service<
    u32,
    Response = u32,
    Error = Error<Infallible>,
    Future = impl Future<Output = Result<u32, Error<Infallible>>> + Send,
> + Clone
+ Send
+ 'static {
    let rt = rt.clone();
    tower::service_fn(move |x: u32| {
        let rt = rt.clone();
        async move {
            rt.sleep(ms(10)).await;
            Ok::<_, Error<Infallible>>(x)
        }
    })
}

/// Docs (`Event`): "a bulkhead's (or adaptive limiter's) slot granted to a queued caller is
/// given back"; (`AdmitMode::WaitReady`): "the guard taken there ... is held until the call's
/// response future completes"; (`AdmitMode::WaitCall`): "each call waits for admission on its
/// own". Eight callers through an `AdmitLayer` over two slots, in both waiting modes, over a
/// bulkhead and an adaptive limiter whose listeners panic on every wait: the two admitted at
/// once answer, the six that waited panic, and the capacity is whole afterwards.
async fn admit_layer_loses_nothing_to_a_panicking_listener<R: Runtime>(rt: Clocked<R>) {
    for mode in [AdmitMode::WaitReady, AdmitMode::WaitCall] {
        let bulkhead = Bulkhead::builder(2)
            .max_queue(8)
            .max_wait(None)
            .on_event(panics_when_waited)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let limiter = AdaptiveLimiter::builder(FixedLimit(2))
            .max_queue(8)
            .max_wait(None)
            .on_event(panics_when_waited)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let through_bulkhead = AdmitLayer::new(bulkhead.clone(), mode)
            .runtime(rt.clone())
            .layer(slow_echo(&rt));
        let through_limiter = AdmitLayer::new(limiter.clone(), mode)
            .runtime(rt.clone())
            .layer(slow_echo(&rt));
        let mut calls = Vec::new();
        for i in 0..8u32 {
            let mut svc = through_bulkhead.clone();
            calls.push(rt.spawn(async move { svc.ready().await?.call(i).await }));
            let mut svc = through_limiter.clone();
            calls.push(rt.spawn(async move { svc.ready().await?.call(i).await }));
        }
        let (mut answered, mut panicked) = (0, 0);
        for call in calls {
            match within(&rt, SEC * 10, "a call", call).await {
                Ok(Ok(_)) => answered += 1,
                Err(JoinError::Panicked(_)) => panicked += 1,
                other => panic!("{mode:?}: {other:?}"),
            }
        }
        assert_eq!((answered, panicked), (4, 12), "{mode:?}");
        assert_eq!(
            (
                bulkhead.available(),
                bulkhead.in_flight(),
                bulkhead.queued()
            ),
            (2, 0, 0),
            "{mode:?}: the bulkhead is whole"
        );
        assert_eq!(
            (limiter.in_flight(), limiter.queued()),
            (0, 0),
            "{mode:?}: the limiter is whole"
        );
        let held: Vec<_> = (0..2).map(|_| limiter.try_acquire().unwrap()).collect();
        assert!(limiter.try_acquire().is_err());
        drop(held);
        drop((through_bulkhead, through_limiter));
    }
}

#[test]
fn admit_layer_loses_nothing_to_a_panicking_listener_on_every_runtime() {
    hang::without_hanging("AdmitLayer with panicking listeners", || {
        on_every_runtime!(admit_layer_loses_nothing_to_a_panicking_listener);
    });
}

/// Docs (`Event`): "a breaker permit whose outcome listener panics records nothing and gives a
/// half-open probe's slot back, as any permit unwound by a panic does"; "a bulkhead's (or
/// adaptive limiter's) slot granted to a queued caller is given back". A pipeline (adaptive
/// limiter of one slot with a queue, then a breaker) and a tower `BreakerLayer`: a probe whose
/// success listener panics, and the caller queued behind it whose wait listener panics. The
/// breaker stays half-open with its probe slot free, the limiter whole, and the next call
/// closes the breaker.
async fn a_pipeline_and_a_breaker_layer_survive_panicking_listeners<R: Runtime>(rt: Clocked<R>) {
    let armed_breaker = |rt: &Clocked<R>| {
        let armed = Arc::new(AtomicBool::new(true));
        CircuitBreaker::builder()
            .runtime(rt.clone())
            .consecutive_failures(1)
            .break_duration(SEC)
            .max_half_open_wait(None)
            .on_event(move |event: &Event<'_>| {
                if matches!(event.kind, EventKind::Succeeded) && armed.swap(false, SeqCst) {
                    panic!("the outcome listener panics once (on purpose)");
                }
            })
            .build()
            .unwrap()
    };
    let breaker = armed_breaker(&rt);
    let limiter = AdaptiveLimiter::builder(FixedLimit(1))
        .max_queue(4)
        .max_wait(None)
        .on_event(panics_when_waited)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(limiter.clone())
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let tripped = pipeline.call(|| async { Err::<u32, _>("down") }).await;
    assert_eq!(tripped, Err(Error::Inner("down")));
    assert_eq!(breaker.state(), State::Open);
    rt.sleep(SEC).await;
    let (p1, r1) = (pipeline.clone(), rt.clone());
    let probe = rt.spawn(async move {
        p1.call(|| {
            let r = r1.clone();
            async move {
                r.sleep(ms(10)).await;
                Ok::<u32, &str>(1)
            }
        })
        .await
    });
    until(&rt, SEC, "the probe is admitted", || {
        limiter.in_flight() == 1
    })
    .await;
    let p2 = pipeline.clone();
    let queued = rt.spawn(async move { p2.call(|| async { Ok::<u32, &str>(2) }).await });
    let probe = within(&rt, SEC, "the probe", probe).await;
    assert!(matches!(probe, Err(JoinError::Panicked(_))), "{probe:?}");
    let queued = within(&rt, SEC, "the queued call", queued).await;
    assert!(matches!(queued, Err(JoinError::Panicked(_))), "{queued:?}");
    assert_eq!(
        (limiter.in_flight(), limiter.queued()),
        (0, 0),
        "the limiter is whole"
    );
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "the probe recorded nothing"
    );
    assert_eq!(pipeline.call(|| async { Ok::<u32, &str>(3) }).await, Ok(3));
    assert_eq!(breaker.state(), State::Closed, "its probe slot came back");
    assert_eq!(limiter.in_flight(), 0);

    // The same probe through tower's BreakerLayer.
    let breaker = armed_breaker(&rt);
    let svc = BreakerLayer::new(breaker.clone()).layer(slow_echo(&rt));
    breaker.try_acquire().unwrap().failure();
    rt.sleep(SEC).await;
    let mut probing = svc.clone();
    let probe = rt.spawn(async move { probing.ready().await?.call(7).await });
    let probe = within(&rt, SEC, "the tower probe", probe).await;
    assert!(matches!(probe, Err(JoinError::Panicked(_))), "{probe:?}");
    assert_eq!(breaker.state(), State::HalfOpen);
    let mut next = svc.clone();
    assert_eq!(next.ready().await.unwrap().call(8).await, Ok(8));
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn a_pipeline_and_a_breaker_layer_survive_panicking_listeners_on_every_runtime() {
    hang::without_hanging(
        "a pipeline and a breaker layer with panicking listeners",
        || {
            on_every_runtime!(a_pipeline_and_a_breaker_layer_survive_panicking_listeners);
        },
    );
}

// === 8. a queue shrunk below its waiters refuses newcomers and sheds nobody ====================

/// Docs (`Bulkhead::reconfigure`): "Callers already queued stay queued when the queue shrinks;
/// until it is back within its bound, a caller that would queue is refused (and sheds nobody:
/// shedding one waiter would not make room)"; module docs: "FIFO among waiters"; (`rejected`):
/// "Calls rejected so far". Four waiters, the queue shrunk to one: direct callers, a
/// pipeline, and tower `WaitCall` and `WaitReady` layers are each refused at once and counted
/// once; the four are then served in order; once the queue is within its bound again, a
/// newcomer queues.
#[test]
fn a_shrunk_bulkhead_queue_refuses_newcomers_through_every_front() {
    let clock = FakeClock::new();
    let settings = |queue| {
        Bulkhead::builder(1)
            .max_queue(queue)
            .max_wait(None)
            .runtime(clock.clone())
    };
    let bulkhead = settings(4).build().unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut waiters: Vec<_> = (0..4)
        .map(|_| Box::pin(bulkhead.acquire_owned(Deadline::none())))
        .collect();
    for waiter in &mut waiters {
        assert!(poll_once(waiter.as_mut()).is_pending());
    }
    assert_eq!(bulkhead.queued(), 4);
    bulkhead.reconfigure(settings(1)).unwrap();
    assert_eq!(bulkhead.queued(), 4, "queued callers stay queued");
    let rejected_before = bulkhead.rejected();

    let mut direct = Box::pin(bulkhead.acquire_owned(Deadline::none()));
    assert!(matches!(
        poll_once(direct.as_mut()),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
    let mut admitted = Box::pin(bulkhead.admit(Wait::Until(Deadline::none())));
    assert!(matches!(
        poll_once(admitted.as_mut()),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
    let pipeline = Pipeline::builder()
        .runtime(clock.clone())
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap();
    let mut call = Box::pin(pipeline.call(|| async { Ok::<u32, ()>(1) }));
    assert!(matches!(
        poll_once(call.as_mut()),
        Poll::Ready(Err(Error::Rejected(Rejected::BulkheadFull)))
    ));
    let mut svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitCall)
        .runtime(clock.clone())
        .layer(tower::service_fn(|x: u32| async move {
            Ok::<_, Error<Infallible>>(x)
        }));
    assert!(
        poll_once(std::pin::pin!(
            std::future::poll_fn(|cx| svc.poll_ready(cx))
        ))
        .is_ready()
    );
    let mut response = Box::pin(svc.call(5));
    assert!(matches!(
        poll_once(response.as_mut()),
        Poll::Ready(Err(Error::Rejected(Rejected::BulkheadFull)))
    ));
    // WaitReady (`AdmitMode::WaitReady`): "A wait the stage refuses (..., a full queue) is
    // never a poll_ready error ...: poll_ready then reports ready and the next call fails at
    // once with the refusal, without calling the inner service."
    let inner_calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&inner_calls);
    let mut ready_mode = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        .runtime(clock.clone())
        .layer(tower::service_fn(move |x: u32| {
            counted.fetch_add(1, SeqCst);
            async move { Ok::<_, Error<Infallible>>(x) }
        }));
    assert!(matches!(
        poll_once(std::pin::pin!(std::future::poll_fn(
            |cx| ready_mode.poll_ready(cx)
        ))),
        Poll::Ready(Ok(()))
    ));
    let mut refused = Box::pin(ready_mode.call(6));
    assert!(matches!(
        poll_once(refused.as_mut()),
        Poll::Ready(Err(Error::Rejected(Rejected::BulkheadFull)))
    ));
    drop(refused);
    assert_eq!(
        inner_calls.load(SeqCst),
        0,
        "the inner service was not called"
    );
    assert_eq!(
        bulkhead.queued(),
        4,
        "nobody was shed for the refused callers"
    );
    assert_eq!(
        bulkhead.rejected() - rejected_before,
        5,
        "each refusal counted once"
    );
    for waiter in &mut waiters {
        assert!(poll_once(waiter.as_mut()).is_pending(), "still queued");
    }

    // Served in order, one permit at a time.
    drop(held);
    for (i, waiter) in waiters.iter_mut().enumerate() {
        let permit = match poll_once(waiter.as_mut()) {
            Poll::Ready(Ok(permit)) => permit,
            Poll::Ready(Err(e)) => panic!("waiter {i} is served in order: {e:?}"),
            Poll::Pending => panic!("waiter {i} is served in order: still pending"),
        };
        assert_eq!(bulkhead.in_flight(), 1);
        if bulkhead.queued() >= 1 {
            // Still at (or over) the bound of one: a newcomer is refused.
            let mut late = Box::pin(bulkhead.acquire_owned(Deadline::none()));
            assert!(matches!(
                poll_once(late.as_mut()),
                Poll::Ready(Err(Rejected::BulkheadFull))
            ));
        }
        drop(permit); // handed to the next waiter
    }
    assert_eq!((bulkhead.queued(), bulkhead.in_flight()), (0, 0));
    // Back within the bound: a newcomer queues, and gets the slot when it frees.
    let blocker = bulkhead.try_acquire_owned().unwrap();
    let mut newcomer = Box::pin(bulkhead.acquire_owned(Deadline::none()));
    assert!(poll_once(newcomer.as_mut()).is_pending());
    assert_eq!(bulkhead.queued(), 1);
    drop(blocker);
    assert!(matches!(poll_once(newcomer.as_mut()), Poll::Ready(Ok(_))));
    drop(newcomer);
    assert_eq!(
        (
            bulkhead.available(),
            bulkhead.in_flight(),
            bulkhead.queued()
        ),
        (1, 0, 0)
    );
}

/// Docs (`AdaptiveLimiter::reconfigure`): "callers already queued ... stay queued when the
/// queue shrinks (until it is back within its bound, a caller that would queue is refused,
/// whatever its priority, and sheds nobody)"; (`KeyedAdaptiveLimiter::reconfigure`): "Applies
/// settings to every key held ... as each key's AdaptiveLimiter::reconfigure says". A keyed
/// table: key a has three sheddable waiters when every key's queue shrinks to two; a critical
/// and a default caller of key a are refused and shed nobody; key b, with its own queue of the
/// new size, sheds its newest sheddable waiter for a critical one as usual.
#[test]
fn a_shrunk_keyed_adaptive_queue_sheds_nobody_for_a_refused_critical_caller() {
    let clock = FakeClock::new();
    let settings = |queue| {
        AdaptiveLimiter::builder(FixedLimit(1))
            .max_queue(queue)
            .max_wait(None)
            .runtime(clock.clone())
    };
    let hosts = settings(3).keyed().build::<&'static str>().unwrap();
    let held_a = hosts.try_acquire(&"a").unwrap();
    let a = hosts.get(&"a").unwrap();
    let a_shed = a.with_priority(Priority::Sheddable);
    let mut waiters: Vec<_> = (0..3)
        .map(|_| Box::pin(a_shed.admit(Wait::Until(Deadline::none()))))
        .collect();
    for waiter in &mut waiters {
        assert!(poll_once(waiter.as_mut()).is_pending());
    }
    assert_eq!(a.queued(), 3);
    hosts.reconfigure(settings(2)).unwrap();
    assert_eq!(a.queued(), 3, "queued callers stay queued");
    for priority in [Priority::Critical, Priority::Default] {
        let mut caller = Box::pin(
            a.with_priority(priority)
                .admit(Wait::Until(Deadline::none())),
        );
        assert!(
            matches!(
                poll_once(caller.as_mut()),
                Poll::Ready(Err(Rejected::BulkheadFull))
            ),
            "{priority:?}: 3 queued, room for 2: refused"
        );
        assert_eq!(a.queued(), 3, "{priority:?}: nobody shed for it");
        for (i, waiter) in waiters.iter_mut().enumerate() {
            assert!(
                poll_once(waiter.as_mut()).is_pending(),
                "waiter {i} was shed"
            );
        }
    }
    // Key b has the new queue of two from the start: shedding works as always.
    let held_b = hosts.try_acquire(&"b").unwrap();
    let b = hosts.get(&"b").unwrap();
    let b_shed = b.with_priority(Priority::Sheddable);
    let mut b_waiters: Vec<_> = (0..2)
        .map(|_| Box::pin(b_shed.admit(Wait::Until(Deadline::none()))))
        .collect();
    for waiter in &mut b_waiters {
        assert!(poll_once(waiter.as_mut()).is_pending());
    }
    let mut b_critical = Box::pin(
        b.with_priority(Priority::Critical)
            .admit(Wait::Until(Deadline::none())),
    );
    assert!(
        poll_once(b_critical.as_mut()).is_pending(),
        "queued by shedding one"
    );
    assert!(matches!(
        poll_once(b_waiters[1].as_mut()),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
    drop(held_b);
    assert!(
        matches!(poll_once(b_critical.as_mut()), Poll::Ready(Ok(_))),
        "served first"
    );
    drop((b_critical, b_waiters));
    // Key a's three are served in order once its slot frees.
    drop(held_a);
    for (i, waiter) in waiters.iter_mut().enumerate() {
        match poll_once(waiter.as_mut()) {
            Poll::Ready(Ok(permit)) => permit.ignore(),
            Poll::Ready(Err(e)) => panic!("waiter {i}: {e:?}"),
            Poll::Pending => panic!("waiter {i}: still pending"),
        }
    }
    assert_eq!((hosts.in_flight(&"a"), a.queued()), (0, 0));
    assert_eq!(hosts.in_flight(&"b"), 0);
}

// === 9. CircuitBreaker: an outcome racing a reset never reaches the fresh window ===============

/// How the main thread starts a fresh closed period in a round.
#[derive(Clone, Copy, Debug)]
enum Freshen {
    Reset,
    ReshapingReconfigure,
    ProbeCloses,
}

/// Docs (module, Generations): "every transition bumps a generation the permit carries; an
/// outcome from an earlier state never moves the current one (a reset replaces the window
/// rather than emptying it, so not even an outcome racing the reset reaches the fresh
/// window)"; (`reset`): "Back to closed with an empty window"; (`Reconfigured::Reset`): "the
/// breaker was reset to closed with an empty window ... as reset does". Eight threads hold
/// permits of a closed period and record failures while the main thread starts a fresh closed
/// period (a reset, a reshaping reconfigure, or a probe closing the breaker). After each round:
/// no failure in the window, no run of failures (two fresh failures leave a three-in-a-row
/// breaker closed, the third opens it).
#[test]
fn stale_failures_racing_a_fresh_closed_period_never_count() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 4;
    const ROUNDS: usize = 600;
    hang::without_hanging("threads racing breaker resets", || {
        for freshen in [
            Freshen::Reset,
            Freshen::ReshapingReconfigure,
            Freshen::ProbeCloses,
        ] {
            let clock = FakeClock::new();
            let shape = |calls| {
                CircuitBreaker::builder()
                    .runtime(clock.clone())
                    .consecutive_failures(3)
                    .failure_rate(0.5)
                    .minimum_calls(1_000)
                    .window(Window::Count { calls })
                    .break_duration(SEC)
                    .half_open_probes(1)
                    .max_half_open_wait(None)
            };
            let breaker = shape(1_000).build().unwrap();
            let start = Arc::new(Barrier::new(THREADS + 1));
            let acquired = Arc::new(Barrier::new(THREADS + 1));
            let go = Arc::new(Barrier::new(THREADS + 1));
            let recorded = Arc::new(Barrier::new(THREADS + 1));
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (breaker, start, acquired, go, recorded) = (
                        breaker.clone(),
                        Arc::clone(&start),
                        Arc::clone(&acquired),
                        Arc::clone(&go),
                        Arc::clone(&recorded),
                    );
                    std::thread::spawn(move || {
                        let mut rng = SplitMix64::new(t as u64);
                        for _ in 0..ROUNDS {
                            start.wait();
                            let permits: Vec<_> = (0..PER_THREAD)
                                .map(|_| breaker.try_acquire_owned().expect("closed"))
                                .collect();
                            acquired.wait();
                            go.wait();
                            for permit in permits {
                                for _ in 0..draw(&mut rng, 64) {
                                    std::hint::spin_loop();
                                }
                                permit.failure();
                            }
                            recorded.wait();
                        }
                    })
                })
                .collect();
            let mut rng = SplitMix64::new(0xB4EA);
            for round in 0..ROUNDS {
                start.wait();
                acquired.wait();
                // Every permit out is of the closed period about to end.
                let probe = if let Freshen::ProbeCloses = freshen {
                    for _ in 0..3 {
                        breaker.try_acquire().unwrap().failure();
                    }
                    assert_eq!(breaker.state(), State::Open);
                    clock.advance(SEC);
                    let probe = breaker.try_acquire_owned().expect("half-open");
                    assert!(probe.is_probe());
                    Some(probe)
                } else {
                    None
                };
                go.wait();
                for _ in 0..draw(&mut rng, 200) {
                    std::hint::spin_loop();
                }
                match freshen {
                    Freshen::Reset => breaker.reset(),
                    Freshen::ReshapingReconfigure => {
                        let calls = if round % 2 == 0 { 999 } else { 1_000 };
                        assert_eq!(
                            breaker.reconfigure(shape(calls)).unwrap(),
                            Reconfigured::Reset
                        );
                    }
                    Freshen::ProbeCloses => probe.unwrap().success(),
                }
                recorded.wait();
                assert_eq!(breaker.state(), State::Closed, "{freshen:?} round {round}");
                let counts = breaker.counts();
                assert_eq!(
                    counts.failures, 0,
                    "{freshen:?} round {round}: a stale failure in the fresh window: {counts:?}"
                );
                if !matches!(freshen, Freshen::ProbeCloses) {
                    assert_eq!(counts.calls, 0, "{freshen:?} round {round}: {counts:?}");
                }
                for _ in 0..2 {
                    breaker.try_acquire().unwrap().failure();
                }
                assert_eq!(
                    breaker.state(),
                    State::Closed,
                    "{freshen:?} round {round}: a stale failure joined the run of failures"
                );
                breaker.try_acquire().unwrap().failure();
                assert_eq!(breaker.state(), State::Open, "{freshen:?} round {round}");
                breaker.reset();
            }
            for worker in workers {
                worker.join().unwrap();
            }
        }
    });
}

// === 10. AdaptiveLimiter: a limit of zero from an algorithm is applied as one ==================

/// A user's algorithm that answers a drop with a limit of zero (a "kill switch").
#[derive(Clone)]
struct KillSwitch(u32);

impl LimitAlgorithm for KillSwitch {
    fn limit(&self) -> u32 {
        self.0
    }

    fn update(&mut self, sample: &Sample) -> u32 {
        self.0 = if sample.dropped { 0 } else { 4 };
        self.0
    }

    fn bounds(&self) -> (u32, u32) {
        (0, 4)
    }
}

/// Docs (`LimitAlgorithm::update`): "A limiter applies at least 1 (a limit of zero would admit
/// no call, and so no sample could ever raise it)"; (adaptive module): "a smaller one revokes
/// nothing held, and admits nobody new, queued callers included, until fewer are in flight".
/// Four calls held and a caller queued when one of them answers zero: the limit reads 1, the
/// queued caller waits until none is in flight, is then admitted, and its success raises the
/// limit again. On every runtime.
async fn a_kill_switch_with_calls_held_and_a_caller_queued<R: Runtime>(rt: Clocked<R>) {
    let limiter = AdaptiveLimiter::builder(KillSwitch(4))
        .max_queue(4)
        .max_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let mut held: Vec<_> = (0..4).map(|_| limiter.try_acquire().unwrap()).collect();
    let l = limiter.clone();
    let waiter = rt.spawn(async move {
        let permit = l.admit(Wait::Until(Deadline::none())).await?;
        let in_flight = l.in_flight();
        permit.success();
        Ok::<usize, Rejected>(in_flight)
    });
    until(&rt, SEC, "the caller queues", || limiter.queued() == 1).await;
    held.pop().unwrap().failure();
    assert_eq!(limiter.limit(), 1, "zero is applied as one");
    for _ in 0..3 {
        rt.sleep(ms(5)).await;
        assert_eq!(
            limiter.queued(),
            1,
            "3 in flight, a limit of 1: still queued"
        );
        drop(held.pop());
    }
    let admitted_with = within(&rt, HOUR, "the queued caller", waiter)
        .await
        .unwrap()
        .expect("admitted once nothing was in flight");
    assert_eq!(admitted_with, 1, "alone in flight");
    assert_eq!(
        limiter.limit(),
        4,
        "it learned from the call it let through"
    );
    let again: Vec<_> = (0..4).map(|_| limiter.try_acquire().unwrap()).collect();
    assert_eq!(limiter.try_acquire().unwrap_err(), Rejected::BulkheadFull);
    drop(again);
    // A drop when nothing else is in flight: still one call goes on, for ever.
    for _ in 0..5 {
        limiter.try_acquire().unwrap().failure();
        assert_eq!(limiter.limit(), 1);
    }
    rt.sleep(HOUR * 24 * 365).await;
    let one = limiter
        .try_acquire()
        .expect("a year later, one call still goes");
    assert!(limiter.try_acquire().is_err());
    one.success();
    assert_eq!(limiter.limit(), 4);
}

#[test]
fn a_kill_switch_with_calls_held_and_a_caller_queued_on_every_runtime() {
    hang::without_hanging("a kill-switch algorithm", || {
        on_every_runtime!(a_kill_switch_with_calls_held_and_a_caller_queued);
    });
}

/// Docs (`LimitAlgorithm::update`): "A limiter applies at least 1"; (`KeyedAdaptiveLimiter`):
/// "its calls teach its algorithm alone"; (`AdmitLayer` via the adaptive module): "behind
/// AdmitLayer (an error is a failure ...)". A keyed table of kill switches: a pipeline over key
/// a fails, a's limit reads 1 (b's stays 4); a tower layer over a's handle still gets a call
/// through, and its success lifts a's limit back. An algorithm whose limit is zero at build is
/// either refused or applied as one.
async fn a_keyed_kill_switch_through_a_pipeline_and_a_layer<R: Runtime>(rt: Clocked<R>) {
    let hosts = AdaptiveLimiter::builder(KillSwitch(4))
        .runtime(rt.clone())
        .keyed()
        .build::<&'static str>()
        .unwrap();
    let a = hosts.get(&"a").unwrap();
    let b = hosts.get(&"b").unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(a.clone())
        .build()
        .unwrap();
    let failed = pipeline
        .call(|| async { Err::<u32, _>("overloaded") })
        .await;
    assert_eq!(failed, Err(Error::Inner("overloaded")));
    assert_eq!((hosts.limit(&"a"), hosts.limit(&"b")), (Some(1), Some(4)));
    let mut svc = AdmitLayer::new(a.clone(), AdmitMode::Reject)
        .runtime(rt.clone())
        .layer(slow_echo(&rt));
    let blocker = hosts.try_acquire(&"a").unwrap();
    assert!(
        matches!(
            svc.ready().await.unwrap().call(1).await,
            Err(Error::Rejected(Rejected::BulkheadFull))
        ),
        "one in flight, a limit of one"
    );
    drop(blocker);
    assert_eq!(svc.ready().await.unwrap().call(2).await, Ok(2));
    assert_eq!(
        hosts.limit(&"a"),
        Some(4),
        "it learned from the call it let through"
    );
    drop((svc, pipeline, a, b));

    match AdaptiveLimiter::builder(KillSwitch(0))
        .runtime(rt.clone())
        .build()
    {
        Err(_) => {}
        Ok(limiter) => {
            assert_eq!(
                limiter.limit(),
                1,
                "a zero limit at build is applied as one"
            );
            let one = limiter.try_acquire().expect("one call is admitted");
            one.success();
        }
    }
}

#[test]
fn a_keyed_kill_switch_through_a_pipeline_and_a_layer_on_every_runtime() {
    hang::without_hanging("a keyed kill switch", || {
        on_every_runtime!(a_keyed_kill_switch_through_a_pipeline_and_a_layer);
    });
}

// === 11. fs::write_atomic: a cancelled blocking step is io::ErrorKind::Other ===================

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The job a `LosesBlocking` loses: job 1,000 (its counter starts below it, so the step lost
/// is chosen by where the count starts).
fn job_1000(job: usize) -> bool {
    job == 1_000
}

/// Docs (`write_atomic`, Errors): "A blocking step that panicked, or that its runtime cancelled
/// ..., is reported as an io::Error of kind Other, never Interrupted"; "an error up to the
/// rename leaves the target untouched and the temporary file removed. The directory sync comes
/// after the rename, so its error leaves the complete new contents in place". Each step lost
/// in turn, then each step panicking in turn, on every runtime: kind `Other`, the old contents
/// for every step but the last (the directory sync: the new contents), no temporary file.
async fn write_atomic_loses_each_step_in_turn<R: Runtime>(rt: Clocked<R>) {
    let old = b"old contents".to_vec();
    let new = b"the complete new contents".to_vec();
    for panics in [false, true] {
        let mut outcomes = Vec::new();
        for step in 0..32usize {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("cfg");
            std::fs::write(&path, &old).unwrap();
            let result = if panics {
                let rt = PanicAt {
                    inner: rt.clone(),
                    calls: Arc::new(AtomicUsize::new(0)),
                    fail_at: step,
                };
                tidewall::fs::write_atomic(&rt, &path, new.clone()).await
            } else {
                let rt = LosesBlocking {
                    inner: rt.clone(),
                    jobs: Arc::new(AtomicUsize::new(1_000 - step)),
                    lose: job_1000,
                };
                tidewall::fs::write_atomic(&rt, &path, new.clone()).await
            };
            let contents = std::fs::read(&path).unwrap();
            assert_eq!(
                entries(dir.path()),
                ["cfg"],
                "panics {panics}, step {step}: a temporary file was left"
            );
            match result {
                Ok(()) => {
                    assert_eq!(contents, new, "panics {panics}, step {step}");
                    break;
                }
                Err(e) => {
                    assert_eq!(
                        e.kind(),
                        io::ErrorKind::Other,
                        "panics {panics}, step {step}: {e}"
                    );
                    outcomes.push(contents == new);
                    assert!(
                        contents == old || contents == new,
                        "panics {panics}, step {step}: a partial file"
                    );
                }
            }
        }
        assert!(
            outcomes.len() >= 4,
            "panics {panics}: {} steps",
            outcomes.len()
        );
        let (last, before) = outcomes.split_last().unwrap();
        assert!(
            before.iter().all(|&new_in_place| !new_in_place),
            "panics {panics}: a step before the directory sync left the new contents: {outcomes:?}"
        );
        assert!(
            *last,
            "panics {panics}: the directory sync comes after the rename"
        );
    }

    // A user's I/O loop that retries `Interrupted` at once: with a runtime that loses every
    // blocking job, it must not spin.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cfg");
    std::fs::write(&path, &old).unwrap();
    let gone = LosesBlocking {
        inner: rt.clone(),
        jobs: Arc::new(AtomicUsize::new(0)),
        lose: |_| true,
    };
    let mut attempts = 0;
    let result = loop {
        attempts += 1;
        match tidewall::fs::write_atomic(&gone, &path, new.clone()).await {
            Err(e) if e.kind() == io::ErrorKind::Interrupted && attempts < 100 => continue,
            other => break other,
        }
    };
    assert_eq!(attempts, 1, "never Interrupted");
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::Other);
    assert_eq!(std::fs::read(&path).unwrap(), old);
}

#[test]
fn write_atomic_loses_each_step_in_turn_on_every_runtime() {
    hang::without_hanging("write_atomic losing its steps", || {
        on_every_runtime!(write_atomic_loses_each_step_in_turn);
    });
}
