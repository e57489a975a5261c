//! Hostile black-box tests of the contracts that changed in this session, written from the
//! rustdoc alone: fail-fast fan-out (`try_run`, `try_run_iter`), the HTTP client stack's
//! kept responses and rate-limit pacing, bulkhead listeners and reconfiguration, an adaptive
//! limiter inside a pipeline, `Clocked::drive` and `FakeClock`, and `RetryBudget` at extreme
//! ages. Virtual time throughout; seeded randomness; a real-time bound only on hanging.
#![cfg(all(feature = "tokio", feature = "test-util", feature = "http"))]

mod common;
#[path = "common/hang.rs"]
mod hang;
mod keyed_support;
mod support;

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::{Either, select};
use keyed_support::client::{
    Answer, FRONTS, Front, Hosts, auth, builder, get, send, spawn_send, status, with,
};
use keyed_support::{HOUR, secs};
use support::{Rng, ms};
use tidewall::adaptive::{
    AdaptiveLimiter, AnyAlgorithm, FixedLimit, LimitAlgorithm, QueueDiscipline, Sample,
};
use tidewall::breaker::CircuitBreaker;
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::Verdict;
use tidewall::fan_out::{FanOut, FanOutError};
use tidewall::http::{ClientPolicies, Overrides};
use tidewall::pipeline::Pipeline;
use tidewall::rate::KeyedRateLimiter;
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::telemetry::EventKind;
use tidewall::testing::{Clocked, FakeClock};
use tidewall::tower::http::ClientLayer;
use tidewall::{Backoff, ConfigError, Error, Jitter, Rejected};
use tower::ServiceExt as _;
use tower_layer::Layer;

// ---------------------------------------------------------------------------------------
// Fan-out
// ---------------------------------------------------------------------------------------

/// What input `i` does: succeed, fail or panic after so many milliseconds.
#[derive(Debug, Clone, Copy)]
enum Do {
    Ok(u64),
    Err(u64),
    Panic(u64),
}

/// The inputs taken (`f` called) and the tasks whose work ran to its end.
#[derive(Default)]
struct Log {
    started: Mutex<Vec<u32>>,
    finished: Mutex<Vec<u32>>,
    /// Each finished input with the (virtual) time it finished.
    finished_at: Mutex<Vec<(u32, Instant)>>,
}

impl Log {
    fn started(&self) -> Vec<u32> {
        self.started.lock().unwrap().clone()
    }
    fn finished(&self) -> Vec<u32> {
        let mut f = self.finished.lock().unwrap().clone();
        f.sort_unstable();
        f
    }
    /// The inputs whose task finished later than `at` (virtual time).
    fn finished_after(&self, at: Instant) -> Vec<u32> {
        let finished = self.finished_at.lock().unwrap();
        let mut late: Vec<u32> = finished
            .iter()
            .filter(|(_, t)| *t > at)
            .map(|(i, _)| *i)
            .collect();
        late.sort_unstable();
        late
    }
}

type Job = Pin<Box<dyn Future<Output = Result<u32, u32>> + Send>>;

/// The work function: logs each input taken and each task that finished its work.
fn jobs<R: Runtime, P: Fn(u32) -> Do + Send + Sync + 'static>(
    rt: &R,
    log: &Arc<Log>,
    plan: P,
) -> impl FnMut(u32) -> Job + use<R, P> {
    let (rt, log, plan) = (rt.clone(), Arc::clone(log), Arc::new(plan));
    move |i| {
        let (rt, log, what) = (rt.clone(), Arc::clone(&log), plan(i));
        log.started.lock().unwrap().push(i);
        Box::pin(async move {
            let (Do::Ok(d) | Do::Err(d) | Do::Panic(d)) = what;
            rt.sleep(ms(d)).await;
            log.finished.lock().unwrap().push(i);
            log.finished_at.lock().unwrap().push((i, rt.now()));
            match what {
                Do::Ok(_) => Ok(i),
                Do::Err(_) => Err(i),
                Do::Panic(_) => panic!("input {i} crashed (on purpose)"),
            }
        })
    }
}

/// A result, comparable: `Ok(i)`, `Err(Some(i))` for the work's error, `Err(None)` for a task
/// that panicked or was cancelled.
type Tag = Result<u32, Option<u32>>;

fn tag(result: Result<u32, FanOutError<u32>>) -> Tag {
    match result {
        Ok(i) => Ok(i),
        Err(FanOutError::Inner(i)) => Err(Some(i)),
        Err(_) => Err(None),
    }
}

fn fan_out<R: Runtime>(rt: &R, limit: usize, ordered: bool) -> FanOut<R> {
    let f = FanOut::new(limit).unwrap().runtime(rt.clone());
    if ordered { f.ordered() } else { f }
}

// Docs (module): "[`FanOut::try_run`] stops at the first error or panic, aborts the tasks
// still running, takes no further input and ends after yielding that error."
async fn unordered_error_aborts_every_running_task<R: Runtime>(rt: R) {
    let log = Arc::new(Log::default());
    let start = rt.now();
    let results: Vec<Tag> = fan_out(&rt, 4, false)
        .try_run_iter(
            0..100u32,
            jobs(&rt, &log, |i| {
                if i == 2 {
                    Do::Err(1_000)
                } else {
                    Do::Ok(10_000)
                }
            }),
        )
        .map(tag)
        .collect()
        .await;
    assert_eq!(results, [Err(Some(2))]);
    assert_eq!(
        rt.now() - start,
        ms(1_000),
        "nothing waited for the aborted tasks"
    );
    rt.sleep(secs(60)).await;
    assert_eq!(
        log.started(),
        [0, 1, 2, 3],
        "no input taken after the error"
    );
    assert_eq!(log.finished(), [2], "every other task was aborted");
}

#[test]
fn try_run_unordered_error_aborts_every_running_task() {
    on_every_runtime!(unordered_error_aborts_every_running_task);
}

// Docs (module): "stops at the first error or panic" and "ends after yielding that error";
// the results before it are delivered (completion order), and the later failures never are.
async fn unordered_several_failures_only_the_first<R: Runtime>(rt: R) {
    let log = Arc::new(Log::default());
    let plan = |i| match i {
        0 => Do::Ok(500),
        1 => Do::Err(3_000),
        2 => Do::Err(1_000),
        3 => Do::Panic(2_000),
        _ => Do::Ok(10_000),
    };
    let results: Vec<Tag> = fan_out(&rt, 4, false)
        .try_run_iter(0..100u32, jobs(&rt, &log, plan))
        .map(tag)
        .collect()
        .await;
    assert_eq!(results, [Ok(0), Err(Some(2))]);
    rt.sleep(secs(60)).await;
    assert_eq!(log.started(), [0, 1, 2, 3, 4]);
    assert_eq!(
        log.finished(),
        [0, 2],
        "the later error, the panic and the slow task were aborted"
    );
}

#[test]
fn try_run_unordered_several_failures_yield_only_the_first() {
    on_every_runtime!(unordered_several_failures_only_the_first);
}

// Docs (module): "[`FanOut::try_run`] stops at the first error or panic" — a panic is a
// failure as an error is: "aborts the tasks still running".
async fn unordered_panic_aborts<R: Runtime>(rt: R) {
    let log = Arc::new(Log::default());
    let results: Vec<Tag> = fan_out(&rt, 3, false)
        .try_run_iter(
            0..50u32,
            jobs(&rt, &log, |i| {
                if i == 1 {
                    Do::Panic(1_000)
                } else {
                    Do::Ok(10_000)
                }
            }),
        )
        .map(tag)
        .collect()
        .await;
    assert_eq!(results, [Err(None)], "the panic, as a task error, ends it");
    rt.sleep(secs(60)).await;
    assert_eq!(log.started(), [0, 1, 2]);
    assert_eq!(log.finished(), [1]);
}

#[test]
fn try_run_panic_aborts_the_running_tasks() {
    on_every_runtime!(unordered_panic_aborts);
}

// Docs (module): "for an ordered fan-out, the tasks of later inputs (the earlier ones run on,
// and their results are yielded before the error)"; (`try_run`) "aborts the running tasks
// whose results would come after it". Failures in another order than their inputs: the one
// delivered is the one of the earliest input, since earlier ones run on.
async fn ordered_earlier_inputs_run_on<R: Runtime>(rt: R) {
    // Input 2 fails first (1 s), input 1 later (3 s): 1 comes first in input order.
    let log = Arc::new(Log::default());
    let plan = |i| match i {
        0 => Do::Ok(5_000),
        1 => Do::Err(3_000),
        2 => Do::Err(1_000),
        3 => Do::Ok(500),
        _ => Do::Ok(100),
    };
    let start = rt.now();
    let results: Vec<Tag> = fan_out(&rt, 4, true)
        .try_run_iter(0..100u32, jobs(&rt, &log, plan))
        .map(tag)
        .collect()
        .await;
    assert_eq!(results, [Ok(0), Err(Some(1))]);
    assert_eq!(rt.now() - start, secs(5));
    rt.sleep(secs(60)).await;
    assert_eq!(log.started(), [0, 1, 2, 3]);
    assert_eq!(log.finished(), [0, 1, 2, 3]);

    // Input 1 succeeds: it is yielded before the error of 2; input 3 (later) is aborted.
    let log = Arc::new(Log::default());
    let plan = |i| match i {
        0 => Do::Ok(5_000),
        1 => Do::Ok(3_000),
        2 => Do::Err(1_000),
        _ => Do::Ok(10_000),
    };
    let results: Vec<Tag> = fan_out(&rt, 4, true)
        .try_run_iter(0..100u32, jobs(&rt, &log, plan))
        .map(tag)
        .collect()
        .await;
    assert_eq!(results, [Ok(0), Ok(1), Err(Some(2))]);
    rt.sleep(secs(60)).await;
    assert_eq!(log.started(), [0, 1, 2, 3]);
    assert_eq!(
        log.finished(),
        [0, 1, 2],
        "input 3 came after the error: aborted"
    );
}

#[test]
fn try_run_ordered_earlier_inputs_run_on_and_come_first() {
    on_every_runtime!(ordered_earlier_inputs_run_on);
}

// Docs (module): "It takes no input once an error or panic has been reported by its task
// (checked before each input it takes), and aborts as soon as the stream is polled after that
// report, without waiting for the consumer to reach the error". And "A result counts as
// delivered once the poll that returns it has taken it: that poll refills its slot".
async fn slow_consumer_poll_after_report_aborts<R: Runtime>(rt: R) {
    for ordered in [true, false] {
        let log = Arc::new(Log::default());
        let plan = |i| match i {
            0 => Do::Ok(1_000),
            1 => Do::Ok(1_500),
            2 => Do::Err(2_000),
            _ => Do::Ok(10_000),
        };
        let limit = if ordered { 4 } else { 3 };
        let mut results = std::pin::pin!(
            fan_out(&rt, limit, ordered).try_run_iter(0..100u32, jobs(&rt, &log, plan))
        );
        let start = rt.now();
        assert_eq!(results.next().await.map(tag), Some(Ok(0)), "{ordered}");
        assert_eq!(rt.now() - start, ms(1_000));
        // Taken so far: the first `limit`, plus the refill of the delivered slot.
        let taken: Vec<u32> = (0..=u32::try_from(limit).unwrap()).collect();
        assert_eq!(log.started(), taken, "ordered: {ordered}");
        // Busy until 3 s: input 1 finished at 1.5 s, input 2 failed at 2 s.
        rt.sleep(ms(2_000)).await;
        // This poll comes after the report: it aborts the later tasks (still running
        // until 10 s or 11 s) and takes nothing.
        let second = results.next().await.map(tag);
        assert!(
            matches!(second, Some(Ok(1) | Err(Some(2)))),
            "ordered: {ordered}: {second:?}"
        );
        // The consumer is busy again, for a minute, without polling.
        rt.sleep(secs(60)).await;
        assert_eq!(
            log.started(),
            taken,
            "ordered: {ordered}: no input after the report"
        );
        assert_eq!(
            log.finished(),
            [0, 1, 2],
            "ordered: {ordered}: the later tasks were aborted at the poll after the report, \
             not when the consumer reached the error"
        );
        let rest: Vec<Tag> = results.map(tag).collect().await;
        let mut all = vec![Ok(0)];
        all.extend(second);
        all.extend(rest);
        assert_eq!(all, [Ok(0), Ok(1), Err(Some(2))], "ordered: {ordered}");
    }
}

#[test]
fn try_run_aborts_at_the_first_poll_after_the_report_under_a_slow_consumer() {
    on_every_runtime!(slow_consumer_poll_after_report_aborts);
}

// Docs (module): "Bounded: at most `limit` inputs are taken and not yet delivered"; "Cancel
// safety: dropping the stream aborts every task still running (no orphaned work)"; the
// fail-fast rules above (ordered: the results before the earliest failing input, in order,
// then its error; unordered: one failure, last). Seeded workloads dropped at random points.
async fn random_fail_fast_and_drops<R: Runtime>(rt: R) {
    let mut rng = Rng::new(0x5eed_fa11);
    for round in 0..80 {
        let ordered = rng.chance(2);
        let limit = usize::try_from(1 + rng.below(5)).unwrap();
        let n = 16u32;
        let plan: Vec<Do> = (0..n)
            .map(|_| {
                let d = 10 * (1 + rng.below(50));
                match rng.below(20) {
                    0..=2 => Do::Err(d),
                    3 => Do::Panic(d),
                    _ => Do::Ok(d),
                }
            })
            .collect();
        let take = rng.below(u64::from(n) + 2);
        let pauses: Vec<u64> = (0..=take).map(|_| 10 * rng.below(40)).collect();
        let log = Arc::new(Log::default());
        let p = plan.clone();
        let mut stream = Box::pin(
            fan_out(&rt, limit, ordered)
                .try_run_iter(0..n, jobs(&rt, &log, move |i| p[i as usize])),
        );
        let mut got = Vec::new();
        let mut ended = false;
        for pause in pauses.iter().take(usize::try_from(take).unwrap()) {
            rt.sleep(ms(*pause)).await;
            match stream.next().await {
                Some(r) => got.push(tag(r)),
                None => {
                    ended = true;
                    break;
                }
            }
            let started = log.started().len();
            assert!(
                started <= got.len() + limit,
                "round {round}: {started} taken, {} delivered, limit {limit}",
                got.len()
            );
        }
        // A task woken at the same instant may be inside its poll on another thread as the
        // stream is dropped: an abort takes effect at its next poll, so that poll may finish
        // it, at the drop's instant (virtual time stands still while a task is busy). No
        // task may finish at any later instant.
        drop(stream);
        let dropped_at = rt.now();
        rt.sleep(secs(30)).await;
        let late = log.finished_after(dropped_at);
        assert!(
            late.is_empty(),
            "round {round}: tasks {late:?} ran on after the stream was dropped or ended"
        );
        let first_failure = plan.iter().position(|d| !matches!(d, Do::Ok(_)));
        let what = format!("round {round}, ordered {ordered}, limit {limit}, plan {plan:?}");
        if ordered {
            let mut model: Vec<Tag> = (0..first_failure.unwrap_or(n as usize))
                .map(|i| Ok(u32::try_from(i).unwrap()))
                .collect();
            if let Some(f) = first_failure {
                let f = u32::try_from(f).unwrap();
                model.push(Err(match plan[f as usize] {
                    Do::Err(_) => Some(f),
                    _ => None,
                }));
            }
            assert!(
                model.starts_with(&got),
                "{what}: got {got:?}, model {model:?}"
            );
            if ended {
                assert_eq!(got, model, "{what}");
            }
        } else {
            for (k, r) in got.iter().enumerate() {
                match r {
                    Ok(i) => assert!(matches!(plan[*i as usize], Do::Ok(_)), "{what}: {got:?}"),
                    Err(_) => assert_eq!(k, got.len() - 1, "{what}: one failure, last: {got:?}"),
                }
            }
            if ended {
                let errors = got.iter().filter(|r| r.is_err()).count();
                assert_eq!(
                    errors,
                    usize::from(first_failure.is_some()),
                    "{what}: {got:?}"
                );
                if first_failure.is_none() {
                    assert_eq!(got.len(), n as usize);
                }
            }
        }
    }
}

#[test]
fn try_run_random_workloads_dropped_at_random_points() {
    on_every_runtime!(random_fail_fast_and_drops);
}

// Docs (module): "A result counts as delivered once the poll that returns it has taken it:
// that poll refills its slot before handing it over, so the next input runs while the
// consumer handles this result (at that moment `limit` inputs are taken, plus the result in
// hand)"; (`in_flight`) "Inputs taken and not yet delivered (running, or finished and
// waiting)"; a slow consumer pauses the producer.
async fn in_flight_counts_taken_not_delivered<R: Runtime>(rt: R) {
    for ordered in [false, true] {
        let log = Arc::new(Log::default());
        let mut results = std::pin::pin!(
            fan_out(&rt, 3, ordered).run_iter(0..10u32, jobs(&rt, &log, |_| Do::Ok(1_000)))
        );
        // Unordered, inputs 0 to 2 finish at the same instant: any of them comes first.
        let first = results.next().await.unwrap().unwrap().unwrap();
        assert!(
            first < 3 && (!ordered || first == 0),
            "ordered {ordered}: {first}"
        );
        assert_eq!(results.in_flight(), 3, "ordered {ordered}");
        assert_eq!(log.started(), [0, 1, 2, 3], "ordered {ordered}");
        rt.sleep(secs(10)).await;
        assert_eq!(results.in_flight(), 3, "ordered {ordered}: backpressure");
        assert_eq!(log.started().len(), 4, "ordered {ordered}");
        results.as_mut().abort();
        let rest: Vec<u32> = results
            .map(|r| r.unwrap().unwrap())
            .collect::<Vec<_>>()
            .await;
        let mut sorted = rest.clone();
        sorted.push(first);
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3], "ordered {ordered}: the arrived ones");
        if ordered {
            assert_eq!(rest, [1, 2, 3]);
        }
        assert_eq!(log.started().len(), 4);
    }
}

#[test]
fn fan_out_in_flight_and_backpressure_with_a_slow_consumer() {
    on_every_runtime!(in_flight_counts_taken_not_delivered);
}

// Docs (module): "The input stream is pulled only when a slot is free"; "It takes no input
// once an error or panic has been reported by its task (checked before each input it
// takes)". An input stream that yields slowly, with the error reported between two inputs.
async fn slow_input_stream<R: Runtime>(rt: R) {
    for ordered in [false, true] {
        let log = Arc::new(Log::default());
        let produced = Arc::new(Mutex::new(Vec::new()));
        let (clock, made) = (rt.clone(), Arc::clone(&produced));
        // Input i is ready at i seconds.
        let inputs = futures_util::stream::unfold(0u32, move |i| {
            let (clock, made) = (clock.clone(), Arc::clone(&made));
            async move {
                if i > 0 {
                    clock.sleep(secs(1)).await;
                }
                made.lock().unwrap().push(i);
                (i < 20).then_some((i, i + 1))
            }
        });
        let plan = |i| {
            if i == 0 {
                Do::Err(1_500)
            } else {
                Do::Ok(10_000)
            }
        };
        let start = rt.now();
        let results: Vec<Tag> = fan_out(&rt, 4, ordered)
            .try_run(inputs, jobs(&rt, &log, plan))
            .map(tag)
            .collect()
            .await;
        assert_eq!(results, [Err(Some(0))], "ordered {ordered}");
        assert_eq!(rt.now() - start, ms(1_500), "ordered {ordered}");
        rt.sleep(secs(60)).await;
        assert_eq!(
            log.started(),
            [0, 1],
            "ordered {ordered}: no input after the report"
        );
        assert_eq!(log.finished(), [0], "ordered {ordered}");
    }
}

#[test]
fn try_run_with_a_slow_input_stream_takes_nothing_after_the_report() {
    on_every_runtime!(slow_input_stream);
}

// Docs (`FanOut::new`): "[`ConfigError::Zero`] when `limit` is 0"; (internal, shown) "grows
// the slab only when every slot is taken, so a huge limit costs nothing up front". A limit of
// `usize::MAX` runs every input at once, and fail-fast still aborts them all.
async fn huge_limit<R: Runtime>(rt: R) {
    assert!(matches!(FanOut::new(0), Err(ConfigError::Zero { .. })));
    for ordered in [false, true] {
        let log = Arc::new(Log::default());
        let plan = |i| {
            if i == 700 {
                Do::Err(1_000)
            } else {
                Do::Ok(5_000)
            }
        };
        let results: Vec<Tag> = fan_out(&rt, usize::MAX, ordered)
            .try_run_iter(0..1_000u32, jobs(&rt, &log, plan))
            .map(tag)
            .collect()
            .await;
        let mut expected: Vec<Tag> = Vec::new();
        if ordered {
            // The 700 inputs before it run on and come first.
            expected.extend((0..700).map(Ok));
        }
        expected.push(Err(Some(700)));
        assert_eq!(results, expected, "ordered {ordered}");
        rt.sleep(secs(60)).await;
        assert_eq!(log.started().len(), 1_000);
        let finished = log.finished();
        let want: Vec<u32> = if ordered {
            (0..=700).collect()
        } else {
            vec![700]
        };
        assert_eq!(
            finished, want,
            "ordered {ordered}: the later inputs were aborted"
        );
    }
}

#[test]
fn try_run_with_a_huge_limit() {
    on_every_runtime!(huge_limit);
}

// ---------------------------------------------------------------------------------------
// Bulkhead
// ---------------------------------------------------------------------------------------

/// Every slot is free and nobody queued.
fn assert_at_rest<R: Clock>(bulkhead: &Bulkhead<R>) {
    assert_eq!(bulkhead.available(), bulkhead.capacity());
    assert_eq!((bulkhead.queued(), bulkhead.in_flight()), (0, 0));
}

thread_local! {
    static IN_LISTENER: Cell<bool> = const { Cell::new(false) };
}

// Docs (`on_event`): "Calls `listener` with everything the bulkhead does: each refusal with
// its reason, and each wait that ended admitted with its length. On the caller's thread, in
// the call". A listener that reads the bulkhead, takes a slot and reconfigures it from every
// event must not deadlock, and the bulkhead ends at rest.
async fn listener_calls_back_into_the_bulkhead<R: Runtime>(rt: Clocked<R>) {
    let cell: Arc<OnceLock<Bulkhead<Clocked<R>>>> = Arc::new(OnceLock::new());
    let kinds = Arc::new(Mutex::new(Vec::<&'static str>::new()));
    let (c, k) = (Arc::clone(&cell), Arc::clone(&kinds));
    let settings = || Bulkhead::builder(1).max_queue(1).max_wait(ms(100));
    let bulkhead = settings()
        .runtime(rt.clone())
        .on_event(move |event| {
            let kind = match event.kind {
                EventKind::Rejected(_) => "rejected",
                EventKind::Waited(_) => "waited",
                _ => "other",
            };
            if IN_LISTENER.with(Cell::get) {
                return;
            }
            IN_LISTENER.with(|f| f.set(true));
            k.lock().unwrap().push(kind);
            if let Some(b) = c.get() {
                let _ = (b.available(), b.in_flight(), b.queued(), b.rejected());
                let _ = (b.capacity(), b.name());
                drop(b.try_acquire());
                b.reconfigure(Bulkhead::builder(1).max_queue(1).max_wait(ms(100)))
                    .unwrap();
            }
            IN_LISTENER.with(|f| f.set(false));
        })
        .build()
        .unwrap();
    assert!(cell.set(bulkhead.clone()).is_ok());

    let held = bulkhead.try_acquire_owned().unwrap();
    // A refusal at once.
    assert_eq!(bulkhead.try_acquire().unwrap_err(), Rejected::BulkheadFull);
    // A waiter that times out after 100 ms, and one refused because the queue is full.
    let waiter = rt.spawn({
        let b = bulkhead.clone();
        async move { b.acquire().await.map(drop) }
    });
    rt.sleep(ms(1)).await;
    assert_eq!(
        bulkhead.acquire().await.map(drop),
        Err(Rejected::BulkheadFull)
    );
    assert!(waiter.await.unwrap().is_err(), "max_wait passed");
    // A waiter admitted when the slot is freed.
    let waiter = rt.spawn({
        let b = bulkhead.clone();
        let clock = rt.clone();
        async move {
            let p = b.acquire().await;
            clock.sleep(ms(5)).await;
            p.map(drop)
        }
    });
    rt.sleep(ms(10)).await;
    drop(held);
    assert_eq!(waiter.await.unwrap(), Ok(()));
    // A waiter past its deadline.
    let held = bulkhead.try_acquire_owned().unwrap();
    let deadline = tidewall::Deadline::after(&rt, ms(20));
    assert!(bulkhead.acquire_before(deadline).await.is_err());
    drop(held);
    let seen = kinds.lock().unwrap().clone();
    assert!(
        seen.contains(&"rejected") && seen.contains(&"waited"),
        "{seen:?}"
    );
    assert_at_rest(&bulkhead);
}

#[test]
fn bulkhead_listener_calls_back_into_the_bulkhead_from_every_event() {
    hang::without_hanging("listener re-entry, current thread", || {
        common::on_tokio_current_thread(listener_calls_back_into_the_bulkhead);
    });
    hang::without_hanging("listener re-entry, multi thread", || {
        common::on_tokio_multi_thread(listener_calls_back_into_the_bulkhead);
    });
    hang::without_hanging("listener re-entry, smol", || {
        common::on_smol_multi_thread(listener_calls_back_into_the_bulkhead);
    });
}

// Docs (`build`): "[`ConfigError::Zero`] for `max_concurrent == 0`, and for a zero
// `max_wait` with a non-empty queue"; "[`ConfigError::OutOfRange`] for a `max_concurrent`
// above `isize::MAX`"; CoDel's zero `target` or `interval` is `Zero`; (`reconfigure`)
// "validated as build validates them; on an error nothing changes". And the largest
// capacity allowed works and is conserved.
#[test]
fn bulkhead_extreme_configs() {
    let max = usize::try_from(isize::MAX).unwrap();
    let err = |b: tidewall::bulkhead::BulkheadBuilder| b.build().map(|_| ()).unwrap_err();
    assert!(matches!(
        err(Bulkhead::builder(0)),
        ConfigError::Zero { .. }
    ));
    assert!(matches!(
        err(Bulkhead::builder(max + 1)),
        ConfigError::OutOfRange { .. }
    ));
    assert!(matches!(
        err(Bulkhead::builder(1).max_queue(1).max_wait(Duration::ZERO)),
        ConfigError::Zero { .. }
    ));
    let codel = |target, interval| QueueDiscipline::Codel { target, interval };
    assert!(matches!(
        err(Bulkhead::builder(1).discipline(codel(Duration::ZERO, ms(1)))),
        ConfigError::Zero { .. }
    ));
    assert!(matches!(
        err(Bulkhead::builder(1).discipline(codel(ms(1), Duration::ZERO))),
        ConfigError::Zero { .. }
    ));
    // A zero wait with no queue is fine: it never waits.
    assert!(
        Bulkhead::builder(1)
            .max_queue(0)
            .max_wait(Duration::ZERO)
            .build()
            .is_ok()
    );

    let huge = Bulkhead::builder(max).max_queue(0).build().unwrap();
    assert_eq!((huge.capacity(), huge.available()), (max, max));
    let held: Vec<_> = (0..100).map(|_| huge.try_acquire().unwrap()).collect();
    assert_eq!((huge.in_flight(), huge.available()), (100, max - 100));
    // A failed reconfiguration changes nothing.
    assert!(huge.reconfigure(Bulkhead::builder(max + 1)).is_err());
    assert!(huge.reconfigure(Bulkhead::builder(0)).is_err());
    assert_eq!((huge.capacity(), huge.in_flight()), (max, 100));
    // Shrinking the huge one to 1 under 100 permits, then back.
    huge.reconfigure(Bulkhead::builder(1).max_queue(0)).unwrap();
    assert_eq!(
        (huge.capacity(), huge.in_flight(), huge.available()),
        (1, 100, 0)
    );
    assert!(huge.try_acquire().is_err());
    drop(held);
    assert_eq!((huge.in_flight(), huge.available()), (0, 1));
    huge.reconfigure(Bulkhead::builder(max).max_queue(0))
        .unwrap();
    assert_eq!(huge.available(), max);
}

/// Spawns a waiter that records its name when admitted, and holds the slot for 10 ms.
fn queue_up<R: Runtime>(
    rt: &Clocked<R>,
    bulkhead: &Bulkhead<Clocked<R>>,
    order: &Arc<Mutex<Vec<char>>>,
    name: char,
) -> <Clocked<R> as Spawn>::JoinHandle<Result<(), Rejected>> {
    let (b, order, clock) = (bulkhead.clone(), Arc::clone(order), rt.clone());
    rt.spawn(async move {
        let permit = b.acquire().await?;
        order.lock().unwrap().push(name);
        clock.sleep(ms(10)).await;
        drop(permit);
        Ok(())
    })
}

// Docs (`discipline`): "The order the queue admits waiters in"; (`reconfigure`) "Applies
// `settings` to this bulkhead in place"; (internal note, shown) "the queue's discipline,
// then the sizes". A queue standing when the discipline switches is served in the new order.
async fn switch_discipline_while_queued<R: Runtime>(rt: Clocked<R>) {
    for (from, to, expected) in [
        (
            QueueDiscipline::Fifo,
            QueueDiscipline::Lifo,
            ['c', 'b', 'a'],
        ),
        (
            QueueDiscipline::Lifo,
            QueueDiscipline::Fifo,
            ['a', 'b', 'c'],
        ),
    ] {
        let settings = |d| {
            Bulkhead::builder(1)
                .max_queue(10)
                .max_wait(None)
                .discipline(d)
        };
        let bulkhead = settings(from).runtime(rt.clone()).build().unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = bulkhead.try_acquire_owned().unwrap();
        let mut waiters = Vec::new();
        for name in ['a', 'b', 'c'] {
            waiters.push(queue_up(&rt, &bulkhead, &order, name));
            rt.sleep(ms(1)).await;
        }
        assert_eq!(bulkhead.queued(), 3);
        bulkhead.reconfigure(settings(to)).unwrap();
        assert_eq!(bulkhead.queued(), 3, "nobody leaves the queue");
        drop(held);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        assert_eq!(*order.lock().unwrap(), expected, "{from:?} -> {to:?}");
        assert_at_rest(&bulkhead);
    }
}

#[test]
fn bulkhead_reconfigure_switches_the_order_of_a_standing_queue() {
    on_every_runtime!(switch_discipline_while_queued);
}

// Docs (`QueueDiscipline::Codel`): "once the queue has not been empty for `interval`, a
// caller who joins it waits at most `target`. A queue that already stands when a
// `reconfigure` switches CoDel on counts as standing from then."
async fn codel_switched_on_under_a_standing_queue<R: Runtime>(rt: Clocked<R>) {
    let fifo = || Bulkhead::builder(1).max_queue(10).max_wait(None);
    let codel = QueueDiscipline::Codel {
        target: ms(5),
        interval: ms(100),
    };
    let bulkhead = fifo().runtime(rt.clone()).build().unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let early: Vec<_> = ['a', 'b', 'c']
        .into_iter()
        .map(|n| queue_up(&rt, &bulkhead, &order, n))
        .collect();
    // The queue has stood for 10 s when CoDel is switched on.
    rt.sleep(secs(10)).await;
    bulkhead.reconfigure(fifo().discipline(codel)).unwrap();
    let ends = Arc::new(Mutex::new(Vec::new()));
    let joiner = |name: char, rt: &Clocked<R>| {
        let (b, clock, ends) = (bulkhead.clone(), rt.clone(), Arc::clone(&ends));
        rt.spawn(async move {
            let start = clock.now();
            let outcome = b.acquire().await.map(drop);
            ends.lock()
                .unwrap()
                .push((name, clock.now() - start, outcome));
        })
    };
    rt.sleep(ms(1)).await;
    let x = joiner('x', &rt);
    rt.sleep(ms(80)).await;
    // 81 ms after the switch: the queue counts as standing for less than `interval`.
    assert_eq!(
        *ends.lock().unwrap(),
        [],
        "a caller who joined 1 ms after the switch was not cut to `target`"
    );
    assert_eq!(
        bulkhead.queued(),
        4,
        "the waiters from before the switch stay"
    );
    rt.sleep(ms(119)).await;
    // 200 ms after the switch: the queue has stood for `interval`.
    let y = joiner('y', &rt);
    rt.sleep(ms(6)).await;
    let y_end = ends.lock().unwrap().iter().find(|e| e.0 == 'y').cloned();
    match y_end {
        Some((_, waited, outcome)) => {
            assert!(
                outcome.is_err() && waited <= ms(5),
                "{waited:?} {outcome:?}"
            );
        }
        None => panic!("a caller joining a queue standing for `interval` waited over `target`"),
    }
    drop(held);
    rt.sleep(secs(1)).await;
    drop((x, y, early));
    rt.sleep(secs(1)).await;
    assert_eq!(bulkhead.in_flight(), 0);
    assert_eq!(bulkhead.queued(), 0);
}

#[test]
fn bulkhead_codel_switched_on_counts_the_queue_as_standing_from_then() {
    on_every_runtime!(codel_switched_on_under_a_standing_queue);
}

// Docs (module): "When full, a caller either gets [`Rejected::BulkheadFull`] at once
// (`max_queue(0)` ...)"; (`reconfigure`) "Callers already queued stay queued when the queue
// shrinks"; (`rejected`) "Calls rejected so far".
async fn max_queue_zero_refuses_at_once<R: Runtime>(rt: Clocked<R>) {
    let refusals = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&refusals);
    let bulkhead = Bulkhead::builder(1)
        .max_queue(5)
        .max_wait(None)
        .runtime(rt.clone())
        .on_event(move |e| {
            if let EventKind::Rejected(Rejected::BulkheadFull) = e.kind {
                r.fetch_add(1, SeqCst);
            }
        })
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let a = queue_up(&rt, &bulkhead, &order, 'a');
    rt.sleep(ms(1)).await;
    let b = queue_up(&rt, &bulkhead, &order, 'b');
    rt.sleep(ms(1)).await;
    assert_eq!(bulkhead.queued(), 2);
    bulkhead
        .reconfigure(Bulkhead::builder(1).max_queue(0))
        .unwrap();
    assert_eq!(bulkhead.queued(), 2, "already queued: stay queued");
    let before = (bulkhead.rejected(), refusals.load(SeqCst));
    let start = rt.now();
    assert_eq!(
        bulkhead.acquire().await.map(drop),
        Err(Rejected::BulkheadFull)
    );
    let deadline = tidewall::Deadline::after(&rt, secs(60));
    assert_eq!(
        bulkhead.acquire_before(deadline).await.map(drop),
        Err(Rejected::BulkheadFull),
        "max_queue(0) refuses as full, not at the deadline"
    );
    assert_eq!(rt.now(), start, "refused at once");
    assert_eq!(
        (bulkhead.rejected(), refusals.load(SeqCst)),
        (before.0 + 2, before.1 + 2)
    );
    drop(held);
    assert_eq!(a.await.unwrap(), Ok(()));
    assert_eq!(b.await.unwrap(), Ok(()));
    assert_eq!(*order.lock().unwrap(), ['a', 'b']);
    assert_at_rest(&bulkhead);
}

#[test]
fn bulkhead_max_queue_zero_refuses_at_once_and_keeps_the_queued() {
    on_every_runtime!(max_queue_zero_refuses_at_once);
}

// Docs (`in_flight`): "the permits held, which after a shrink exceed the capacity until
// enough of them end"; (`available`) "zero while more are held than a shrunk capacity
// allows"; (`reconfigure`) "shrinking below what is held admits nobody new until enough
// permits come back"; "growing hands the new permits to queued callers first".
async fn shrink_with_a_queue<R: Runtime>(rt: Clocked<R>) {
    let settings = |n| Bulkhead::builder(n).max_queue(10).max_wait(None);
    let bulkhead = settings(4).runtime(rt.clone()).build().unwrap();
    let mut held: Vec<_> = (0..4)
        .map(|_| bulkhead.try_acquire_owned().unwrap())
        .collect();
    let admitted = Arc::new(AtomicUsize::new(0));
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let (b, clock, admitted) = (bulkhead.clone(), rt.clone(), Arc::clone(&admitted));
            rt.spawn(async move {
                let p = b.acquire().await.unwrap();
                admitted.fetch_add(1, SeqCst);
                clock.sleep(HOUR).await;
                drop(p);
            })
        })
        .collect();
    rt.sleep(ms(1)).await;
    assert_eq!(bulkhead.queued(), 3);
    bulkhead.reconfigure(settings(2)).unwrap();
    let state = |b: &Bulkhead<Clocked<R>>| (b.capacity(), b.in_flight(), b.available(), b.queued());
    assert_eq!(state(&bulkhead), (2, 4, 0, 3));
    held.pop();
    rt.sleep(ms(1)).await;
    assert_eq!(
        state(&bulkhead),
        (2, 3, 0, 3),
        "nobody admitted over a shrunk capacity"
    );
    held.pop();
    rt.sleep(ms(1)).await;
    assert_eq!(state(&bulkhead), (2, 2, 0, 3));
    held.pop();
    rt.sleep(ms(1)).await;
    assert_eq!(state(&bulkhead), (2, 2, 0, 2), "one waiter admitted");
    assert_eq!(admitted.load(SeqCst), 1);
    bulkhead.reconfigure(settings(4)).unwrap();
    rt.sleep(ms(1)).await;
    assert_eq!(
        state(&bulkhead),
        (4, 4, 0, 0),
        "growing serves the queue first"
    );
    assert!(bulkhead.try_acquire().is_err());
    drop(held);
    rt.sleep(ms(1)).await;
    assert_eq!(state(&bulkhead), (4, 3, 1, 0));
    for w in waiters {
        w.await.unwrap();
    }
    assert_at_rest(&bulkhead);
}

#[test]
fn bulkhead_in_flight_and_available_after_a_shrink_with_a_queue() {
    on_every_runtime!(shrink_with_a_queue);
}

// ---------------------------------------------------------------------------------------
// Pipeline with an adaptive limiter as its bulkhead
// ---------------------------------------------------------------------------------------

/// An algorithm that records what it is taught, at a fixed limit (8 unless `with_limit`).
#[derive(Clone)]
struct Rec(Arc<Mutex<Vec<Sample>>>, u32);

impl Default for Rec {
    fn default() -> Self {
        Self(Arc::default(), 8)
    }
}

impl Rec {
    fn with_limit(limit: u32) -> Self {
        Self(Arc::default(), limit)
    }
    /// (rtt, dropped) of every sample.
    fn taught(&self) -> Vec<(Duration, bool)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|s| (s.rtt, s.dropped))
            .collect()
    }
}

impl LimitAlgorithm for Rec {
    fn limit(&self) -> u32 {
        self.1
    }
    fn update(&mut self, sample: &Sample) -> u32 {
        self.0.lock().unwrap().push(*sample);
        self.1
    }
    fn bounds(&self) -> (u32, u32) {
        (self.1, self.1)
    }
}

fn backoff(n: u32) -> Backoff {
    Backoff::constant(ms(100))
        .jitter(Jitter::None)
        .max_attempts(n)
        .build()
        .unwrap()
}

fn breaker<R: Runtime>(rt: &Clocked<R>, failures: u32) -> CircuitBreaker<Clocked<R>> {
    CircuitBreaker::builder()
        .runtime(rt.clone())
        .no_failure_rate()
        .consecutive_failures(failures)
        .break_duration(secs(10))
        .build()
        .unwrap()
}

/// An operation failing `fails` times, each attempt taking 50 ms.
fn flaky<R: Runtime>(
    rt: &Clocked<R>,
    fails: u32,
) -> impl FnMut() -> Pin<Box<dyn Future<Output = Result<u32, &'static str>> + Send>> + use<R> {
    let rt = rt.clone();
    let mut n = 0;
    move || {
        n += 1;
        let (rt, fail) = (rt.clone(), n <= fails);
        Box::pin(async move {
            rt.sleep(ms(50)).await;
            if fail { Err("boom") } else { Ok(n) }
        })
    }
}

// Docs (adaptive module): "in a pipeline (as its bulkhead, told how each call ended: one
// sample per call, retries included)"; "When a call ends, its time since admission ... and
// whether it failed go to the algorithm"; (`Admission::release`) Outcome::Success /
// Outcome::Failure (the classifier's failures).
async fn adaptive_learns_one_sample_per_call<R: Runtime>(rt: Clocked<R>) {
    let rec = Rec::default();
    let limiter = AdaptiveLimiter::builder(rec.clone())
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(secs(10))
        .bulkhead(limiter.clone())
        .retry(backoff(3))
        .breaker(breaker(&rt, 100))
        .build()
        .unwrap();
    // Fail, fail, succeed: 50 + 100 + 50 + 100 + 50 ms since admission.
    assert_eq!(pipeline.call(flaky(&rt, 2)).await, Ok(3));
    assert_eq!(
        rec.taught(),
        [(ms(350), false)],
        "one success sample for the call"
    );
    // Every attempt fails: one drop.
    assert_eq!(
        pipeline.call(flaky(&rt, 9)).await,
        Err(Error::Inner("boom"))
    );
    assert_eq!(rec.taught()[1..], [(ms(350), true)]);
    assert_eq!(limiter.in_flight(), 0);
}

#[test]
fn pipeline_adaptive_limiter_learns_one_sample_per_call_retries_included() {
    on_every_runtime!(adaptive_learns_one_sample_per_call);
}

// Docs (`Admission::release`): "Through a pipeline, a call whose retry a later stage refused
// (an open breaker, a spent budget) after an attempt reached the dependency ends with that
// attempt's outcome"; "Outcome::Ignored (... any ending before the dependency was called: a
// later stage's refusal ...)".
async fn adaptive_and_breaker_refusals<R: Runtime>(rt: Clocked<R>) {
    let rec = Rec::default();
    let limiter = AdaptiveLimiter::builder(rec.clone())
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(secs(1))
        .bulkhead(limiter.clone())
        .retry(backoff(3))
        .breaker(breaker(&rt, 1))
        .build()
        .unwrap();
    // The first attempt fails and opens the breaker; the retry is refused by it.
    let outcome = pipeline.call(flaky(&rt, 9)).await;
    assert!(outcome.is_err(), "{outcome:?}");
    let taught = rec.taught();
    assert_eq!(taught.len(), 1, "{taught:?}");
    assert!(
        taught[0].1,
        "the attempt that reached the dependency failed: {taught:?}"
    );
    // The breaker is open: no attempt reaches the dependency, nothing is taught.
    let outcome = pipeline.call(flaky(&rt, 0)).await;
    assert!(
        matches!(outcome, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{outcome:?}"
    );
    assert_eq!(rec.taught().len(), 1, "a refused call teaches nothing");
    assert_eq!(limiter.in_flight(), 0);
}

#[test]
fn pipeline_adaptive_limiter_after_a_breaker_refusal() {
    on_every_runtime!(adaptive_and_breaker_refusals);
}

// Docs (`Admission::release`): the retry refused by "a spent budget" after an attempt
// reached the dependency: the call "ends with that attempt's outcome".
async fn adaptive_and_a_spent_budget<R: Runtime>(rt: Clocked<R>) {
    let rec = Rec::default();
    let limiter = AdaptiveLimiter::builder(rec.clone())
        .runtime(rt.clone())
        .build()
        .unwrap();
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.01)
        .min_per_second(0)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(secs(10))
        .bulkhead(limiter.clone())
        .retry(backoff(3))
        .retry_budget(RetryBudget::new(policy, rt.now()))
        .breaker(breaker(&rt, 100))
        .build()
        .unwrap();
    assert_eq!(
        pipeline.call(flaky(&rt, 9)).await,
        Err(Error::Inner("boom"))
    );
    assert_eq!(rec.taught(), [(ms(50), true)], "one attempt, failed");
}

#[test]
fn pipeline_adaptive_limiter_after_a_spent_retry_budget() {
    on_every_runtime!(adaptive_and_a_spent_budget);
}

// Docs (`Admission::release`): "Outcome::Failure (the classifier's failures, timeouts, the
// deadline running out during the call)"; "A guard dropped without it (a cancelled call)
// teaches nothing"; "Outcome::Ignored (the classifier's verdict ...)".
async fn adaptive_deadline_cancel_ignore<R: Runtime>(rt: Clocked<R>) {
    let rec = Rec::default();
    let limiter = AdaptiveLimiter::builder(rec.clone())
        .runtime(rt.clone())
        .build()
        .unwrap();
    let slow = |rt: &Clocked<R>| {
        let rt = rt.clone();
        move || {
            let rt = rt.clone();
            async move {
                rt.sleep(HOUR).await;
                Ok::<u32, &'static str>(1)
            }
        }
    };
    // The deadline runs out during the attempt.
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(secs(1))
        .bulkhead(limiter.clone())
        .retry(backoff(3))
        .breaker(breaker(&rt, 100))
        .build()
        .unwrap();
    let outcome = pipeline.call(slow(&rt)).await;
    assert_eq!(outcome, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(
        rec.taught(),
        [(secs(1), true)],
        "the deadline ran out during the call"
    );
    // The attempt timeout cuts every attempt: failures.
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(secs(10))
        .bulkhead(limiter.clone())
        .retry(backoff(2))
        .breaker(breaker(&rt, 100))
        .attempt_timeout(ms(200))
        .build()
        .unwrap();
    let outcome = pipeline.call(slow(&rt)).await;
    assert_eq!(outcome, Err(Error::TimedOut));
    assert_eq!(
        rec.taught()[1..],
        [(ms(500), true)],
        "timeouts are failures"
    );
    // A cancelled call teaches nothing.
    let call = pipeline.call(slow(&rt));
    match select(Box::pin(call), Box::pin(rt.sleep(ms(100)))).await {
        Either::Left(_) => panic!("ended"),
        Either::Right(_) => {}
    }
    assert_eq!(rec.taught().len(), 2, "a cancelled call teaches nothing");
    assert_eq!(limiter.in_flight(), 0);
    // The classifier ignores the error: nothing taught.
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(secs(10))
        .bulkhead(limiter.clone())
        .retry(backoff(3))
        .breaker(breaker(&rt, 100))
        .classify(|r: Result<&u32, &&'static str>| {
            if r.is_ok() {
                Verdict::Success
            } else {
                Verdict::Ignored
            }
        })
        .build()
        .unwrap();
    assert_eq!(
        pipeline.call(flaky(&rt, 9)).await,
        Err(Error::Inner("boom"))
    );
    assert_eq!(rec.taught().len(), 2, "an ignored outcome teaches nothing");
    assert_eq!(limiter.in_flight(), 0);
}

#[test]
fn pipeline_adaptive_limiter_deadline_timeout_cancel_and_ignore() {
    on_every_runtime!(adaptive_deadline_cancel_ignore);
}

// Docs (`Admission::release`): "Outcome::Ignored (... any ending before the dependency was
// called ...)"; (adaptive module) "A call that was cancelled, or whose outcome was ignored,
// teaches the algorithm nothing". A call the deadline ends in the limiter's own queue never
// reached the dependency; the call holding the slot teaches its own success.
async fn adaptive_queue_cut<R: Runtime>(rt: Clocked<R>) {
    let rec = Rec::with_limit(1);
    let limiter = AdaptiveLimiter::builder(rec.clone())
        .max_queue(4)
        .max_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(secs(1))
        .bulkhead(limiter.clone())
        .retry(backoff(3))
        .breaker(breaker(&rt, 100))
        .build()
        .unwrap();
    let holder = rt.spawn({
        let (pipeline, clock) = (pipeline.clone(), rt.clone());
        async move {
            pipeline
                .call(|| {
                    let clock = clock.clone();
                    async move {
                        clock.sleep(ms(900)).await;
                        Ok::<u32, &'static str>(1)
                    }
                })
                .await
        }
    });
    rt.sleep(ms(500)).await;
    assert_eq!(limiter.in_flight(), 1);
    // Waits in the queue from 500 ms; the slot frees at 900 ms: admitted, and its attempt
    // of 50 ms succeeds.
    let outcome = pipeline.call(flaky(&rt, 0)).await;
    assert_eq!(outcome, Ok(1));
    assert_eq!(holder.await.unwrap(), Ok(1));
    assert_eq!(rec.taught(), [(ms(900), false), (ms(50), false)]);
    // Now the holder runs past the waiter's deadline: the waiter is cut in the queue.
    let holder = rt.spawn({
        let (pipeline, clock) = (pipeline.clone(), rt.clone());
        async move {
            pipeline
                .call(|| {
                    let clock = clock.clone();
                    async move {
                        clock.sleep(ms(990)).await;
                        Ok::<u32, &'static str>(2)
                    }
                })
                .await
        }
    });
    rt.sleep(ms(10)).await;
    let waiter = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(ms(100))
        .bulkhead(limiter.clone())
        .retry(backoff(3))
        .build()
        .unwrap();
    let outcome = waiter.call(flaky(&rt, 0)).await;
    assert_eq!(outcome, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(
        rec.taught().len(),
        2,
        "a call cut in the queue teaches nothing"
    );
    assert_eq!(holder.await.unwrap(), Ok(2));
    assert_eq!(rec.taught()[2..], [(ms(990), false)]);
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
}

#[test]
fn pipeline_adaptive_limiter_call_cut_in_its_queue_teaches_nothing() {
    on_every_runtime!(adaptive_queue_cut);
}

// ---------------------------------------------------------------------------------------
// HTTP client stack
// ---------------------------------------------------------------------------------------

// Docs (`ClientPoliciesBuilder::build`): "[`ConfigError::Zero`] for `max_authorities == 0`".
#[test]
fn client_max_authorities_zero_is_refused() {
    let built = ClientPolicies::builder().max_authorities(0).build();
    assert!(matches!(built, Err(ConfigError::Zero { .. })), "{built:?}");
    let built = ClientPolicies::builder().max_authorities(1).build();
    assert_eq!(built.unwrap().max_authorities(), 1);
}

fn hog() -> Overrides {
    Overrides::new()
        .no_retry()
        .attempt_timeout(HOUR)
        .deadline(HOUR)
}

// Docs (`run`, Errors): "a response an earlier attempt got is kept: when the deadline cuts
// the attempt after it, in the stack's own waits, its attempt timeout or its send, that
// response is returned as `Ok`". Here the later attempt waits in the bulkhead's queue (and,
// with an adaptive limit instead, in the limiter's queue) until the deadline.
async fn kept_when_cut_in_a_queue<R: Runtime>(rt: Clocked<R>) {
    for adaptive in [false, true] {
        for front in FRONTS {
            let hosts = Hosts::new(&rt);
            let stack = builder(&rt, 100).deadline(Some(secs(1)));
            let stack = if adaptive {
                let limit = AdaptiveLimiter::builder(AnyAlgorithm::from(FixedLimit(1)))
                    .max_queue(10)
                    .max_wait(None);
                stack.bulkhead(None).adaptive(Some(limit))
            } else {
                stack.bulkhead(Some(Bulkhead::builder(1).max_queue(10).max_wait(None)))
            };
            let policies = stack.build().unwrap();
            hosts.play("q:80", [Answer::Status(503), Answer::Slow(HOUR)]);
            let start = rt.now();
            let call = spawn_send(&rt, front, &policies, &hosts, get("http://q/"));
            rt.sleep(ms(5)).await;
            // Takes the only slot during the first attempt's backoff.
            let _hog = spawn_send(&rt, front, &policies, &hosts, with(get("http://q/"), hog()));
            let outcome = call.await.unwrap();
            let what = format!("{front:?}, adaptive {adaptive}: {outcome:?}");
            assert_eq!(status(&outcome), Some(503), "{what}");
            assert_eq!(rt.now() - start, secs(1), "{what}");
            assert_eq!(hosts.seen("q:80"), 2, "{what}");
        }
    }
}

#[test]
fn client_keeps_the_earlier_response_when_the_deadline_cuts_a_queue_wait() {
    on_every_runtime!(kept_when_cut_in_a_queue);
}

// Docs (`run`, Errors): as above, "its attempt timeout or its send": the second attempt
// times out, the third is cut by the deadline in its send; the first one's 503 is the answer.
async fn kept_when_cut_in_a_send<R: Runtime>(rt: Clocked<R>) {
    let mut failures = Vec::new();
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        // The plain case: the second attempt is cut by the deadline in its send.
        let plain = builder(&rt, 100)
            .deadline(Some(secs(1)))
            .attempt_timeout(Some(secs(10)))
            .build()
            .unwrap();
        hosts.play("s1:80", [Answer::Status(503), Answer::Slow(HOUR)]);
        let start = rt.now();
        let outcome = send(front, &plain, &hosts, get("http://s1/")).await;
        assert_eq!(
            (status(&outcome), rt.now() - start, hosts.seen("s1:80")),
            (Some(503), secs(1), 2),
            "{front:?}: {outcome:?}"
        );
        // After the server's own `Retry-After` (1 s), the retry is cut at 1.5 s.
        let hinted = builder(&rt, 100)
            .deadline(Some(ms(1_500)))
            .attempt_timeout(Some(secs(10)))
            .build()
            .unwrap();
        hosts.play("s2:80", [Answer::After(503, 1), Answer::Slow(HOUR)]);
        let start = rt.now();
        let outcome = send(front, &hinted, &hosts, get("http://s2/")).await;
        assert_eq!(
            (status(&outcome), rt.now() - start, hosts.seen("s2:80")),
            (Some(503), ms(1_500), 2),
            "{front:?}: {outcome:?}"
        );
        // A timeout first, then the 503, then the cut: the 503 is kept.
        hosts.play(
            "s3:80",
            [Answer::Slow(HOUR), Answer::Status(503), Answer::Slow(HOUR)],
        );
        let start = rt.now();
        // A timeout at 400 ms, the 503 at 410 ms, the third cut at 700 ms.
        let short = builder(&rt, 100)
            .deadline(Some(ms(700)))
            .attempt_timeout(Some(ms(400)))
            .build()
            .unwrap();
        let outcome = send(front, &short, &hosts, get("http://s3/")).await;
        assert_eq!(
            (status(&outcome), rt.now() - start, hosts.seen("s3:80")),
            (Some(503), ms(700), 3),
            "{front:?}: {outcome:?}"
        );
        // An attempt that timed out between the response and the one the deadline cuts:
        // 503 at 0, a timeout at 610 ms, the third attempt cut at 1 s.
        let policies = builder(&rt, 100)
            .deadline(Some(secs(1)))
            .attempt_timeout(Some(ms(600)))
            .build()
            .unwrap();
        hosts.play("s:80", [Answer::Status(503), Answer::Slow(HOUR)]);
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, get("http://s/")).await;
        let got = (status(&outcome), rt.now() - start, hosts.seen("s:80"));
        if got != (Some(503), secs(1), 3) {
            failures.push(format!("{front:?}: {got:?} {outcome:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "the first attempt's 503 was not kept: {failures:?}"
    );
}

#[test]
fn client_keeps_the_earlier_response_when_the_deadline_cuts_a_send() {
    on_every_runtime!(kept_when_cut_in_a_send);
}

// Docs (`run`, Errors): "only a rate-limit wait known at once to end past the deadline is
// refused at once, before the deadline, with `DeadlineExceeded`". (Whether the earlier 503 is
// kept then is not said plainly: both answers are accepted; the time is asserted.)
async fn rate_wait_past_the_deadline<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt, 100)
            .deadline(Some(secs(1)))
            .rate_limit(Some(KeyedRateLimiter::builder(1, secs(10))))
            .build()
            .unwrap();
        hosts.play("r:80", [Answer::Status(503)]);
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, get("http://r/")).await;
        let elapsed = rt.now() - start;
        assert!(
            status(&outcome) == Some(503)
                || matches!(outcome, Err(Error::Rejected(Rejected::DeadlineExceeded))),
            "{front:?}: {outcome:?}"
        );
        assert!(
            elapsed < secs(1),
            "{front:?}: refused at once, not at the deadline"
        );
        assert_eq!(hosts.seen("r:80"), 1, "{front:?}");
    }
}

#[test]
fn client_rate_wait_known_past_the_deadline_ends_before_it() {
    on_every_runtime!(rate_wait_past_the_deadline);
}

// Docs (`rate_limit`): "waited for within the deadline, last before the send: an attempt
// holds its bulkhead or adaptive slot while it waits, so the token is taken just before the
// send and sends keep the limit's pace (tokens taken before a queue would let the attempts
// that waited in it go out together)". Two slots free at the same instant: the two queued
// requests must still go out a period apart.
async fn rate_limit_keeps_pace<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt, 100)
            .deadline(Some(secs(60)))
            .attempt_timeout(Some(secs(60)))
            .bulkhead(Some(Bulkhead::builder(2).max_queue(10).max_wait(None)))
            .rate_limit(Some(
                KeyedRateLimiter::builder(1, secs(1)).jitter(Duration::ZERO),
            ))
            .build()
            .unwrap();
        // (The limiter's jitter is off: its waits end exactly when a cell frees.)
        // The first ends at 10 s; the second, sent at 1 s, ends at 10 s too.
        hosts.play(
            "p:80",
            [
                Answer::Slow(secs(10)),
                Answer::Slow(secs(9)),
                Answer::Status(200),
            ],
        );
        let times = Arc::new(Mutex::new(Vec::new()));
        let start = rt.now();
        let mut calls = Vec::new();
        for _ in 0..4 {
            let (policies, hosts, times, clock) = (
                policies.clone(),
                hosts.clone(),
                Arc::clone(&times),
                rt.clone(),
            );
            calls.push(rt.spawn(async move {
                let request = get("http://p/");
                let overrides = Overrides::new().no_retry();
                match front {
                    Front::Loop => {
                        policies
                            .run(request, overrides, |r| {
                                times.lock().unwrap().push(clock.now() - start);
                                hosts.send(r)
                            })
                            .await
                    }
                    Front::Tower => {
                        let client = tower::service_fn(move |r: http::Request<String>| {
                            times.lock().unwrap().push(clock.now() - start);
                            hosts.send(r)
                        });
                        ClientLayer::new(policies)
                            .layer(client)
                            .oneshot(with(request, overrides))
                            .await
                    }
                }
            }));
            rt.sleep(ms(1)).await;
        }
        rt.sleep(ms(10_500) - ms(4)).await;
        let in_flight = policies.bulkheads().unwrap().in_flight(&auth("http://p/"));
        let sent = times.lock().unwrap().clone();
        assert_eq!(
            in_flight,
            1,
            "{front:?}: the fourth holds its slot while it waits for the token; sends so far \
             {sent:?}, seen {}",
            hosts.seen("p:80")
        );
        for c in calls {
            assert_eq!(status(&c.await.unwrap()), Some(200), "{front:?}");
        }
        assert_eq!(
            *times.lock().unwrap(),
            [secs(0), secs(1), secs(10), secs(11)],
            "{front:?}: sends at the limit's pace"
        );
    }
}

#[test]
fn client_rate_limit_is_waited_last_and_keeps_the_pace() {
    on_every_runtime!(rate_limit_keeps_pace);
}

// Docs (`bulkhead::on_event`): "each wait that ended admitted with its length".
async fn waited_length<R: Runtime>(rt: Clocked<R>) {
    let waits = Arc::new(Mutex::new(Vec::new()));
    let w = Arc::clone(&waits);
    let bulkhead = Bulkhead::builder(1)
        .max_queue(4)
        .max_wait(None)
        .runtime(rt.clone())
        .on_event(move |e| {
            if let EventKind::Waited(d) = e.kind {
                w.lock().unwrap().push(d);
            }
        })
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let a = queue_up(&rt, &bulkhead, &order, 'a');
    rt.sleep(ms(250)).await;
    drop(held);
    assert_eq!(a.await.unwrap(), Ok(()));
    let waits = waits.lock().unwrap().clone();
    assert_eq!(
        waits
            .iter()
            .filter(|d| **d > Duration::ZERO)
            .collect::<Vec<_>>(),
        [&ms(250)],
        "{waits:?}"
    );
}

#[test]
fn bulkhead_waited_event_carries_the_wait() {
    on_every_runtime!(waited_length);
}

// Docs (`ClientPolicies`): "at least the server's `Retry-After` between attempts (...; a
// `Retry-After` that ends past the deadline ends the call at once)".
async fn retry_after_under_a_deadline<R: Runtime>(rt: Clocked<R>) {
    for front in FRONTS {
        let hosts = Hosts::new(&rt);
        let policies = builder(&rt, 100)
            .retry(
                Backoff::constant(ms(10))
                    .jitter(Jitter::None)
                    .max_attempts(10)
                    .build()
                    .unwrap(),
            )
            .deadline(Some(ms(2_500)))
            .build()
            .unwrap();
        hosts.play("ra:80", [Answer::After(503, 1)]);
        let start = rt.now();
        let outcome = send(front, &policies, &hosts, get("http://ra/")).await;
        assert_eq!(status(&outcome), Some(503), "{front:?}: {outcome:?}");
        assert_eq!(hosts.seen("ra:80"), 3, "{front:?}: at 0, 1 s and 2 s");
        assert_eq!(rt.now() - start, secs(2), "{front:?}: answered at once");
    }
}

#[test]
fn client_retry_after_past_the_deadline_answers_at_once() {
    on_every_runtime!(retry_after_under_a_deadline);
}

// Docs (`ClientPoliciesBuilder::adaptive`): "Every attempt takes a slot after the breaker
// admitted it and holds it through the rate limit's wait; its sample is timed from its send
// (the stack's own waits are not the host's latency), and teaches the algorithm how it
// ended ... a failure (in the standard table a 5xx ...) is a drop ... An attempt ... cut by
// the deadline teaches nothing." AIMD halves on a drop or on a sample slower than 500 ms.
async fn adaptive_learns_from_the_send<R: Runtime>(rt: Clocked<R>) {
    for (k, front) in FRONTS.into_iter().enumerate() {
        let aimd = tidewall::adaptive::Aimd::builder()
            .min_limit(1)
            .initial_limit(2)
            .max_limit(2)
            .backoff_ratio(0.5)
            .timeout(ms(500))
            .build()
            .unwrap();
        let policies = builder(&rt, 100)
            .deadline(Some(secs(5)))
            .attempt_timeout(Some(secs(10)))
            .bulkhead(None)
            .adaptive(Some(
                AdaptiveLimiter::builder(AnyAlgorithm::from(aimd))
                    .max_queue(10)
                    .max_wait(None),
            ))
            .rate_limit(Some(
                KeyedRateLimiter::builder(1, secs(1)).jitter(Duration::ZERO),
            ))
            .build()
            .unwrap();
        let host = format!("ad{k}");
        let (uri, key) = (format!("http://{host}/"), format!("{host}:80"));
        let hosts = Hosts::new(&rt);
        hosts.play(
            &key,
            [
                Answer::Slow(ms(200)),
                Answer::Slow(ms(200)),
                Answer::Slow(HOUR),
                Answer::Status(503),
            ],
        );
        let limit = || policies.adaptive_limiters().unwrap().limit(&auth(&uri));
        let once = || with(get(&uri), Overrides::new().no_retry());
        // Two at once: the second holds its slot through a 1 s rate wait, then 200 ms.
        let a = spawn_send(&rt, front, &policies, &hosts, once());
        let b = spawn_send(&rt, front, &policies, &hosts, once());
        assert_eq!(status(&a.await.unwrap()), Some(200));
        assert_eq!(status(&b.await.unwrap()), Some(200));
        assert_eq!(
            limit(),
            Some(2),
            "{front:?}: the waits are not the host's latency"
        );
        // Cut by the deadline in its send: nothing taught.
        let cut = with(get(&uri), Overrides::new().no_retry().deadline(secs(1)));
        let outcome = send(front, &policies, &hosts, cut).await;
        assert!(
            matches!(outcome, Err(Error::Rejected(Rejected::DeadlineExceeded))),
            "{front:?}: {outcome:?}"
        );
        assert_eq!(
            limit(),
            Some(2),
            "{front:?}: a deadline cut teaches nothing"
        );
        // A 503: a drop (the control).
        let outcome = send(front, &policies, &hosts, once()).await;
        assert_eq!(status(&outcome), Some(503));
        assert_eq!(limit(), Some(1), "{front:?}: a 503 is a drop");
        assert_eq!(hosts.seen(&key), 4);
    }
}

#[test]
fn client_adaptive_limit_learns_from_the_send_alone() {
    on_every_runtime!(adaptive_learns_from_the_send);
}

// Docs (`ClientPolicies`): "A table full of authorities it may not forget refuses a new one
// with [`Rejected::KeysFull`], but for ... the rate limits' table, which answers
// `RateLimited` until a key rests, and that is waited for within the deadline as any
// rate-limit wait." One authority at most, one busy: a second is refused by the breakers'
// table, and with only a rate limit it waits and is sent within the deadline.
async fn one_authority<R: Runtime>(rt: Clocked<R>) {
    for (k, front) in FRONTS.into_iter().enumerate() {
        let (busy, other) = (format!("http://busy{k}/"), format!("http://other{k}/"));
        let hosts = Hosts::new(&rt);
        hosts.play(&format!("busy{k}:80"), [Answer::Slow(secs(10))]);
        let long = |uri: &str| {
            with(
                get(uri),
                Overrides::new()
                    .no_retry()
                    .deadline(secs(30))
                    .attempt_timeout(secs(30)),
            )
        };
        let breakers = builder(&rt, 100).max_authorities(1).build().unwrap();
        let first = spawn_send(&rt, front, &breakers, &hosts, long(&busy));
        rt.sleep(ms(1)).await;
        let start = rt.now();
        let outcome = send(front, &breakers, &hosts, long(&other)).await;
        assert!(
            matches!(outcome, Err(Error::Rejected(Rejected::KeysFull { .. }))),
            "{front:?}: {outcome:?}"
        );
        assert_eq!(rt.now(), start, "{front:?}: refused at once");
        assert_eq!(status(&first.await.unwrap()), Some(200));

        let limited = builder(&rt, 100)
            .breaker(None)
            .bulkhead(None)
            .max_authorities(1)
            .rate_limit(Some(
                KeyedRateLimiter::builder(1, secs(1)).jitter(Duration::ZERO),
            ))
            .build()
            .unwrap();
        let first = spawn_send(&rt, front, &limited, &hosts, long(&busy));
        rt.sleep(ms(1)).await;
        let start = rt.now();
        let outcome = send(front, &limited, &hosts, long(&other)).await;
        assert_eq!(status(&outcome), Some(200), "{front:?}: {outcome:?}");
        assert!(
            rt.now() - start < secs(30),
            "{front:?}: within the deadline"
        );
        assert_eq!(status(&first.await.unwrap()), Some(200));
    }
}

#[test]
fn client_max_authorities_one_refuses_or_waits_as_documented() {
    on_every_runtime!(one_authority);
}

// ---------------------------------------------------------------------------------------
// Clocked and FakeClock
// ---------------------------------------------------------------------------------------

// Docs (`Clocked::drive`): "Before each jump the driver gives the executor one turn, so a
// wake the executor holds until it is about to park (tokio's `yield_now` and its cooperative
// budget) is seen when this future is the one given to a current-thread `block_on`".
async fn held_wakes<R: Runtime>(rt: Clocked<R>) {
    let start = rt.now();
    let yielder = rt.spawn({
        let rt = rt.clone();
        async move {
            for _ in 0..500 {
                tokio::task::yield_now().await;
            }
            rt.now() - start
        }
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    for i in 0..5_000 {
        tx.send(i).unwrap();
    }
    drop(tx);
    let budgeted = rt.spawn({
        let rt = rt.clone();
        async move {
            let mut sum = 0u64;
            while let Some(i) = rx.recv().await {
                sum += u64::from(i);
            }
            (sum, rt.now() - start)
        }
    });
    rt.sleep(secs(1)).await;
    assert_eq!(
        yielder.await.unwrap(),
        Duration::ZERO,
        "time jumped past a yield"
    );
    let (sum, at) = budgeted.await.unwrap();
    assert_eq!(sum, 4_999 * 5_000 / 2);
    assert_eq!(
        at,
        Duration::ZERO,
        "time jumped past the cooperative budget"
    );
}

#[test]
fn clocked_drive_sees_yield_now_and_the_coop_budget_on_current_thread() {
    common::on_tokio_current_thread(held_wakes);
}

// Docs (module): "A test that waits 10 virtual minutes finishes in microseconds and observes
// exact instants"; (`drive`) advances "to the next timer whenever the future and every task
// spawned through this runtime are idle". Long chains of timers, interleaved.
async fn long_timer_chains<R: Runtime>(rt: Clocked<R>) {
    let chain = |n: u32, step: Duration| {
        let rt = rt.clone();
        rt.clone().spawn(async move {
            let start = rt.now();
            for _ in 0..n {
                rt.sleep(step).await;
            }
            rt.now() - start
        })
    };
    let a = chain(5_000, ms(1));
    let b = chain(700, ms(7));
    let c = chain(3, HOUR);
    assert_eq!(a.await.unwrap(), secs(5));
    assert_eq!(b.await.unwrap(), ms(4_900));
    assert_eq!(c.await.unwrap(), secs(3 * 3_600));
}

#[test]
fn clocked_drive_long_chains_of_timers_land_exactly() {
    on_every_runtime!(long_timer_chains);
}

// Docs (`drive`): time advances "only when every task is idle"; a task woken from another
// thread (a real one, outside the runtime) then runs and sleeps exactly its virtual time.
async fn woken_from_another_thread<R: Runtime>(rt: Clocked<R>) {
    let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
    let task = rt.spawn({
        let rt = rt.clone();
        async move {
            let v = rx.await.unwrap();
            let start = rt.now();
            rt.sleep(secs(1)).await;
            (v, rt.now() - start)
        }
    });
    let thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        tx.send(7).unwrap();
    });
    assert_eq!(task.await.unwrap(), (7, secs(1)));
    thread.join().unwrap();
}

#[test]
fn clocked_drive_tasks_woken_from_other_threads() {
    hang::without_hanging("woken from another thread", || {
        on_every_runtime!(woken_from_another_thread);
    });
}

/// A waker that logs its name when woken.
struct Named(usize, Arc<Mutex<Vec<usize>>>);

impl Wake for Named {
    fn wake(self: Arc<Self>) {
        self.1.lock().unwrap().push(self.0);
    }
}

// Docs (`FakeClock::advance`): "Advances made at once from several threads all count: each
// adds its `by` to the time it finds"; (type) "moving it wakes every timer that has come
// due, in deadline order".
#[test]
fn fake_clock_advances_from_several_threads_all_count() {
    let clock = FakeClock::new();
    let origin = clock.now();
    let mut rng = Rng::new(42);
    let mut deadlines: Vec<u64> = (1..=200).collect();
    for i in (1..deadlines.len()).rev() {
        let j = usize::try_from(rng.below(i as u64 + 1)).unwrap();
        deadlines.swap(i, j);
    }
    let woken = Arc::new(Mutex::new(Vec::new()));
    let mut sleeps: Vec<_> = deadlines
        .iter()
        .map(|&d| {
            let mut sleep = Box::pin(clock.sleep_until(origin + ms(d * 40)));
            let waker = Waker::from(Arc::new(Named(
                usize::try_from(d).unwrap(),
                Arc::clone(&woken),
            )));
            assert!(
                sleep
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending()
            );
            sleep
        })
        .collect();
    assert_eq!(clock.pending_timers(), 200);
    let reader = {
        let clock = clock.clone();
        std::thread::spawn(move || {
            let mut last = clock.now();
            for _ in 0..20_000 {
                let now = clock.now();
                assert!(now >= last, "time went backwards");
                last = now;
            }
        })
    };
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let clock = clock.clone();
            std::thread::spawn(move || {
                for _ in 0..1_000 {
                    clock.advance(ms(1));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    reader.join().unwrap();
    assert_eq!(clock.now() - origin, secs(8), "every advance counted");
    assert_eq!(clock.elapsed(), secs(8));
    let woken = woken.lock().unwrap().clone();
    assert_eq!(woken.len(), 200, "every timer due by 8 s woke");
    // Each advance wakes in deadline order; concurrent advances may interleave their wakes,
    // but every timer came due exactly once.
    let mut sorted = woken.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 200);
    let noop = Waker::noop();
    for s in &mut sleeps {
        assert!(s.as_mut().poll(&mut Context::from_waker(noop)).is_ready());
    }

    // From one thread, one jump: strictly in deadline order.
    let clock = FakeClock::new();
    let origin = clock.now();
    let woken = Arc::new(Mutex::new(Vec::new()));
    let _sleeps: Vec<_> = deadlines
        .iter()
        .map(|&d| {
            let mut sleep = Box::pin(clock.sleep_until(origin + ms(d)));
            let waker = Waker::from(Arc::new(Named(
                usize::try_from(d).unwrap(),
                Arc::clone(&woken),
            )));
            assert!(
                sleep
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending()
            );
            sleep
        })
        .collect();
    clock.advance(secs(1));
    let expected: Vec<usize> = (1..=200).collect();
    assert_eq!(*woken.lock().unwrap(), expected, "in deadline order");
}

// ---------------------------------------------------------------------------------------
// Retry budget
// ---------------------------------------------------------------------------------------

const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// Ages from nothing to past `u64` nanoseconds (584 years) and beyond.
fn ages() -> [Duration; 8] {
    [
        Duration::ZERO,
        ms(2_500),
        HOUR,
        30 * keyed_support::DAY,
        100 * YEAR,
        584 * YEAR + 200 * keyed_support::DAY,
        585 * YEAR,
        2_000 * YEAR,
    ]
}

fn ratio_policy(min_per_second: u32) -> RetryBudgetPolicy {
    RetryBudgetPolicy::builder()
        .ratio(0.1)
        .min_per_second(min_per_second)
        .window(secs(10))
        .buckets(10)
        .build()
        .unwrap()
}

// Docs (`RetryBudget`): "Right at any age: a budget built long before its first use, or idle
// for any time between uses, counts exactly the calls and retries of its last window."
#[test]
fn retry_budget_counts_exactly_at_any_age() {
    let origin = Instant::now();
    for age in ages() {
        let budget = RetryBudget::new(ratio_policy(0), origin);
        let now = origin + age;
        for _ in 0..100 {
            budget.deposit(now);
        }
        assert_eq!(budget.balance(now), 10, "age {age:?}");
        assert_eq!(
            (0..50).filter(|_| budget.try_withdraw(now)).count(),
            10,
            "age {age:?}"
        );
        assert!(!budget.has_balance(now), "age {age:?}");
        // Idle gaps of every length: the old window is gone, only new calls count.
        for gap in ages().into_iter().skip(2) {
            let later = now + gap;
            assert_eq!(budget.balance(later), 0, "age {age:?}, gap {gap:?}");
        }
        let later = now + 585 * YEAR;
        for _ in 0..30 {
            budget.deposit(later);
        }
        assert_eq!(
            budget.balance(later),
            3,
            "age {age:?}: the calls after the gap"
        );
        assert_eq!((0..9).filter(|_| budget.try_withdraw(later)).count(), 3);
    }
}

// Docs (`RetryBudget`): "plus a floor of `min_per_second` retries a second,
// `min_per_second × window` over the window, so a quiet service can still retry", at any age
// and after any idle gap.
#[test]
fn retry_budget_floor_after_idle_gaps() {
    let origin = Instant::now();
    for age in ages() {
        let budget = RetryBudget::new(ratio_policy(2), origin);
        let now = origin + age;
        assert_eq!(budget.balance(now), 20, "age {age:?}: the floor over 10 s");
        assert_eq!((0..50).filter(|_| budget.try_withdraw(now)).count(), 20);
        assert_eq!(budget.balance(now), 0);
        for gap in [secs(10), secs(11), HOUR, 600 * YEAR] {
            let later = now + gap;
            assert_eq!(budget.balance(later), 20, "age {age:?}, gap {gap:?}");
        }
    }
}

// Docs (`RetryBudget`): "The window slides by whole buckets (`window / buckets`, counted from
// `origin`): a call counts from its bucket's start until `window` later, so for between
// `window − window / buckets` and `window` after it was made."
#[test]
fn retry_budget_window_slides_by_whole_buckets_at_any_age() {
    let origin = Instant::now();
    for age in ages() {
        let budget = RetryBudget::new(ratio_policy(0), origin);
        // A whole number of buckets from the origin, then half a bucket in.
        let bucket_start = origin + Duration::from_secs(age.as_secs());
        let made = bucket_start + ms(500);
        for _ in 0..100 {
            budget.deposit(made);
        }
        let still = bucket_start + secs(10) - Duration::from_nanos(1);
        assert_eq!(budget.balance(still), 10, "age {age:?}: within the window");
        assert_eq!(
            budget.balance(bucket_start + secs(10) + ms(1)),
            0,
            "age {age:?}: a window after its bucket's start"
        );
    }
}

// Docs (`RetryBudget::reconfigure`): "A policy with the same window and buckets keeps the
// calls and retries counted so far (a new ratio or floor judges them from the next
// withdrawal); another shape starts an empty window, which only leaves the floor", at any
// age.
#[test]
fn retry_budget_reconfigure_at_any_age() {
    let origin = Instant::now();
    for age in ages() {
        let budget = RetryBudget::new(ratio_policy(0), origin);
        let now = origin + age;
        (0..100).for_each(|_| budget.deposit(now));
        assert_eq!((0..50).filter(|_| budget.try_withdraw(now)).count(), 10);
        let twice = RetryBudgetPolicy::builder()
            .ratio(0.2)
            .min_per_second(0)
            .window(secs(10))
            .buckets(10)
            .build()
            .unwrap();
        budget.reconfigure(twice);
        assert_eq!(budget.balance(now), 10, "age {age:?}: 20 of 100, 10 taken");
        let reshaped = RetryBudgetPolicy::builder()
            .ratio(0.2)
            .min_per_second(1)
            .window(secs(20))
            .buckets(20)
            .build()
            .unwrap();
        budget.reconfigure(reshaped);
        assert_eq!(
            budget.balance(now),
            20,
            "age {age:?}: an empty window, the floor alone"
        );
    }
}

// Docs (`try_withdraw`): "each one uses an epoch no earlier than the last withdrawal's: so
// every withdrawal sees all earlier ones still in the window, even when racing callers
// straddle a bucket boundary, and the budget can never be overdrawn" — at 585 years of age.
#[test]
fn retry_budget_racing_withdrawals_straddling_a_bucket_at_585_years() {
    let origin = Instant::now();
    for age in [Duration::ZERO, 585 * YEAR, 2_000 * YEAR] {
        let budget = RetryBudget::new(ratio_policy(0), origin);
        let bucket = origin + Duration::from_secs(age.as_secs());
        (0..100).for_each(|_| budget.deposit(bucket + ms(900)));
        let granted = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (budget, granted) = (budget.clone(), Arc::clone(&granted));
                std::thread::spawn(move || {
                    for k in 0..20 {
                        // Alternate sides of the boundary at 1 s.
                        let at = if (t + k) % 2 == 0 {
                            bucket + ms(950)
                        } else {
                            bucket + ms(1_050)
                        };
                        if budget.try_withdraw(at) {
                            granted.fetch_add(1, SeqCst);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(granted.load(SeqCst), 10, "age {age:?}: exactly 10% of 100");
        assert_eq!(budget.balance(bucket + ms(1_100)), 0, "age {age:?}");
    }
}
