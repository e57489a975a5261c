//! Bounded fan-out scenarios on every runtime adapter, in virtual time.

mod common;
#[path = "common/hang.rs"]
mod hang;
#[path = "common/spawn_adapters.rs"]
mod spawn_adapters;

use spawn_adapters::DropsUnpolled;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::Stream;
use tidewall::ConfigError;
use tidewall::fan_out::{FanOut, FanOutError};
use tidewall::rt::{JoinError, Runtime};

/// Counts concurrent entries and remembers the peak.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
    finished: AtomicUsize,
}

impl Gauge {
    async fn hold<R: Runtime>(&self, rt: &R, d: Duration) {
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now, SeqCst);
        rt.sleep(d).await;
        self.now.fetch_sub(1, SeqCst);
        self.finished.fetch_add(1, SeqCst);
    }
}

/// The ordered workload: 100 inputs, at most 10 at once.
const INPUTS: u64 = 100;
const LIMIT: usize = 10;

/// Input `i` takes 100, 200 or 300 ms in turn. Later inputs often finish sooner (input 3
/// before 1 and 2), so order has to be restored; and input 0 can be delivered at 100 ms, long
/// before the slowest of the first ten, so a sliding window and chunks of ten part ways at once.
/// Were the head of the window always its slowest input, the finished results behind it would
/// hold their slots until it finished, and an ordered sliding window would run exactly as
/// chunks do: such a workload cannot tell them apart.
fn work_time(i: u64) -> Duration {
    Duration::from_millis(100 * (i % 3 + 1))
}

/// When each input started and finished, on the runtime's (virtual) clock.
struct Record {
    origin: Instant,
    started: Mutex<Vec<Duration>>,
    finished: Mutex<Vec<Duration>>,
    gauge: Gauge,
}

impl Record {
    fn new<R: Runtime>(rt: &R) -> Arc<Self> {
        let unset = vec![Duration::MAX; usize::try_from(INPUTS).unwrap()];
        Arc::new(Self {
            origin: rt.now(),
            started: Mutex::new(unset.clone()),
            finished: Mutex::new(unset),
            gauge: Gauge::default(),
        })
    }

    fn schedule<R: Runtime>(&self, rt: &R, out: Vec<u64>) -> Schedule {
        Schedule {
            started: self.started.lock().unwrap().clone(),
            finished: self.finished.lock().unwrap().clone(),
            out,
            peak: self.gauge.peak.load(SeqCst),
            elapsed: rt.now() - self.origin,
        }
    }
}

/// One input of the workload, its start and finish recorded.
async fn timed_input<R: Runtime>(rt: R, record: Arc<Record>, i: u64) -> u64 {
    let index = usize::try_from(i).unwrap();
    record.started.lock().unwrap()[index] = rt.now() - record.origin;
    record.gauge.hold(&rt, work_time(i)).await;
    record.finished.lock().unwrap()[index] = rt.now() - record.origin;
    i
}

/// What an ordered fan-out did with the workload.
struct Schedule {
    started: Vec<Duration>,
    finished: Vec<Duration>,
    out: Vec<u64>,
    peak: usize,
    elapsed: Duration,
}

/// Why `schedule` is not a full sliding window of `LIMIT`, or `None`. The first `LIMIT` inputs
/// start at once; every later input `i` starts the moment input `i - LIMIT` can be delivered
/// (it and every input before it have finished), so the window stays full while inputs remain.
/// Chunks fail this: they start input `i` only once its predecessor's whole chunk has finished.
fn not_a_sliding_window(schedule: &Schedule) -> Option<String> {
    if let Some(i) = schedule.started[..LIMIT]
        .iter()
        .position(|at| *at != Duration::ZERO)
    {
        return Some(format!(
            "input {i} started at {:?}, not at once",
            schedule.started[i]
        ));
    }
    let mut deliverable = Duration::ZERO;
    for i in LIMIT..schedule.started.len() {
        deliverable = deliverable.max(schedule.finished[i - LIMIT]);
        if schedule.started[i] != deliverable {
            return Some(format!(
                "input {i} started at {:?}, but input {} was deliverable at {deliverable:?}",
                schedule.started[i],
                i - LIMIT
            ));
        }
    }
    None
}

async fn ordered_sliding_window<R: Runtime>(rt: R) {
    let record = Record::new(&rt);
    let (rec, r) = (Arc::clone(&record), rt.clone());
    let out: Vec<u64> = FanOut::new(LIMIT)
        .unwrap()
        .runtime(rt.clone())
        .ordered()
        .run_iter(0..INPUTS, move |i| {
            timed_input(r.clone(), Arc::clone(&rec), i)
        })
        .map(Result::unwrap)
        .collect()
        .await;
    let schedule = record.schedule(&rt, out);
    assert_eq!(schedule.out, (0..INPUTS).collect::<Vec<_>>());
    assert_eq!(schedule.peak, LIMIT);
    assert_eq!(not_a_sliding_window(&schedule), None);
    assert_eq!(
        schedule.started[LIMIT],
        Duration::from_millis(100),
        "input 10 took input 0's slot the moment it finished"
    );
    // The sliding schedule, exactly; chunks of ten take 3 s (ten chunks of 300 ms).
    assert_eq!(schedule.elapsed, Duration::from_millis(2700));
}

#[test]
fn ordered_fan_out_is_a_bounded_sliding_window_on_every_runtime() {
    on_every_runtime!(ordered_sliding_window);
}

/// A chunked fan-out, for contrast only: it takes `LIMIT` inputs, runs them all, delivers them
/// in order, then takes the next `LIMIT`. Bounded and ordered, but not a sliding window.
fn chunked<R: Runtime>(rt: R, record: Arc<Record>) -> impl Stream<Item = u64> {
    let inputs: Vec<u64> = (0..INPUTS).collect();
    let chunks: Vec<Vec<u64>> = inputs.chunks(LIMIT).map(<[u64]>::to_vec).collect();
    futures_util::stream::iter(chunks)
        .then(move |chunk| {
            let tasks: Vec<_> = chunk
                .into_iter()
                .map(|i| rt.spawn(timed_input(rt.clone(), Arc::clone(&record), i)))
                .collect();
            futures_util::future::join_all(tasks)
        })
        .flat_map(|outcomes| futures_util::stream::iter(outcomes.into_iter().map(Result::unwrap)))
}

/// The check above discriminates: a chunked fan-out is ordered, bounded and done well within
/// 10 s, and it fails the check.
async fn chunked_is_not_a_sliding_window<R: Runtime>(rt: R) {
    let record = Record::new(&rt);
    let out: Vec<u64> = chunked(rt.clone(), Arc::clone(&record)).collect().await;
    let schedule = record.schedule(&rt, out);
    assert_eq!(schedule.out, (0..INPUTS).collect::<Vec<_>>());
    assert_eq!(schedule.peak, LIMIT);
    assert_eq!(schedule.elapsed, Duration::from_millis(3000));
    assert_eq!(
        not_a_sliding_window(&schedule).as_deref(),
        Some("input 10 started at 300ms, but input 0 was deliverable at 100ms")
    );
}

#[test]
fn a_chunked_fan_out_fails_the_sliding_window_check_on_every_runtime() {
    on_every_runtime!(chunked_is_not_a_sliding_window);
}

async fn unordered_keeps_working_while_the_consumer_is_busy<R: Runtime>(rt: R) {
    let gauge = Arc::new(Gauge::default());
    let (g, r) = (Arc::clone(&gauge), rt.clone());
    let mut results = FanOut::new(4)
        .unwrap()
        .runtime(rt.clone())
        .run_iter(0..12u32, move |i| {
            let (g, r) = (Arc::clone(&g), r.clone());
            async move {
                g.hold(&r, Duration::from_secs(1)).await;
                i
            }
        });
    assert!(results.next().await.unwrap().is_ok());
    // The consumer is busy for 10 s; spawned work must finish meanwhile (futures'
    // buffer_unordered would have made no progress at all).
    rt.sleep(Duration::from_secs(10)).await;
    assert_eq!(
        gauge.finished.load(SeqCst),
        5,
        "the first result's freed slot was refilled at once"
    );
    assert_eq!(
        results.in_flight(),
        4,
        "but no more than the limit was taken: backpressure"
    );
    let rest: Vec<_> = results.collect().await;
    assert_eq!(rest.len(), 11);
    assert_eq!(gauge.peak.load(SeqCst), 4);
}

#[test]
fn progress_without_the_consumer_on_every_runtime() {
    on_every_runtime!(unordered_keeps_working_while_the_consumer_is_busy);
}

async fn fail_fast_cancels_the_rest<R: Runtime>(rt: R) {
    let gauge = Arc::new(Gauge::default());
    let (g, r) = (Arc::clone(&gauge), rt.clone());
    let start = rt.now();
    let results: Vec<_> = FanOut::new(5)
        .unwrap()
        .runtime(rt.clone())
        .try_run_iter(0..1000u32, move |i| {
            let (g, r) = (Arc::clone(&g), r.clone());
            async move {
                if i == 3 {
                    r.sleep(Duration::from_millis(10)).await;
                    return Err("bad input 3");
                }
                g.hold(&r, Duration::from_secs(60)).await;
                Ok(i)
            }
        })
        .collect()
        .await;
    assert_eq!(results.len(), 1);
    assert!(matches!(results[0], Err(FanOutError::Inner("bad input 3"))));
    assert_eq!(
        rt.now() - start,
        Duration::from_millis(10),
        "nothing waited for the aborted tasks"
    );
    rt.sleep(Duration::from_secs(120)).await;
    assert_eq!(
        gauge.finished.load(SeqCst),
        0,
        "the other tasks were aborted"
    );

    let panicked: Vec<_> = FanOut::new(2)
        .unwrap()
        .runtime(rt.clone())
        .try_run_iter(0..10u32, |i| async move {
            assert!(i != 1, "worker crashed");
            Ok::<_, ()>(i)
        })
        .collect()
        .await;
    assert!(
        panicked
            .iter()
            .any(|r| matches!(r, Err(FanOutError::Task(JoinError::Panicked(_)))))
    );
    assert!(
        panicked.last().unwrap().is_err(),
        "the stream ends at the failure"
    );
}

#[test]
fn fail_fast_on_every_runtime() {
    on_every_runtime!(fail_fast_cancels_the_rest);
}

async fn collect_all_surfaces_panics_as_values<R: Runtime>(rt: R) {
    let results: Vec<_> = FanOut::new(3)
        .unwrap()
        .runtime(rt)
        .run_iter(0..9u32, |i| async move {
            assert!(i % 4 != 1, "crash on {i}");
            i
        })
        .collect()
        .await;
    assert_eq!(results.len(), 9);
    assert_eq!(
        results
            .iter()
            .filter(|r| r.as_ref().is_err_and(JoinError::is_panic))
            .count(),
        2
    );
}

/// `abort` delivers the results that arrived before it (in input order when ordered, the
/// aborted inputs skipped), then ends; the running tasks are aborted and deliver nothing.
async fn abort_delivers_what_already_arrived<R: Runtime>(rt: R) {
    for ordered in [false, true] {
        let gauge = Arc::new(Gauge::default());
        let (g, r) = (Arc::clone(&gauge), rt.clone());
        let fan_out = FanOut::new(4).unwrap().runtime(rt.clone());
        let fan_out = if ordered { fan_out.ordered() } else { fan_out };
        // Input 0 is the slowest: an ordered fan-out holds 1 and 2 behind it.
        let mut results = std::pin::pin!(fan_out.run_iter([4u64, 2, 1, 5], move |secs| {
            let (g, r) = (Arc::clone(&g), r.clone());
            async move {
                g.hold(&r, Duration::from_secs(secs)).await;
                secs
            }
        }));
        // One poll starts all four; nothing is ready yet.
        assert!(futures_util::FutureExt::now_or_never(results.next()).is_none());
        // The consumer is busy for 3 s: inputs 1 and 2 finish meanwhile.
        rt.sleep(Duration::from_secs(3)).await;
        results.as_mut().abort();
        assert_eq!(results.in_flight(), 2, "ordered: {ordered}");
        results.as_mut().abort(); // a second abort changes nothing
        let rest: Vec<u64> = results.map(Result::unwrap).collect().await;
        let expected: [u64; 2] = if ordered { [2, 1] } else { [1, 2] };
        assert_eq!(rest, expected, "ordered: {ordered}");
        rt.sleep(Duration::from_secs(10)).await;
        assert_eq!(
            gauge.finished.load(SeqCst),
            2,
            "ordered: {ordered}: the running tasks were aborted"
        );
    }
}

#[test]
fn abort_delivers_what_already_arrived_on_every_runtime() {
    on_every_runtime!(abort_delivers_what_already_arrived);
}

#[test]
fn panics_are_values_on_every_runtime() {
    on_every_runtime!(collect_all_surfaces_panics_as_values);
}

async fn slow_consumer_pauses_the_producer<R: Runtime>(rt: R) {
    let pulled = Arc::new(AtomicUsize::new(0));
    let p = Arc::clone(&pulled);
    let inputs = futures_util::stream::iter(0..1000u32).inspect(move |_| {
        p.fetch_add(1, SeqCst);
    });
    let mut results = FanOut::new(8)
        .unwrap()
        .runtime(rt.clone())
        .run(inputs, |i| async move { i });
    for consumed in 1..=20 {
        results.next().await.unwrap().unwrap();
        rt.sleep(Duration::from_secs(1)).await;
        assert!(
            pulled.load(SeqCst) <= consumed + 8,
            "pulled {} after {consumed}",
            pulled.load(SeqCst)
        );
    }
}

#[test]
fn backpressure_on_every_runtime() {
    on_every_runtime!(slow_consumer_pauses_the_producer);
}

#[test]
fn zero_limit_is_a_config_error_not_a_hang() {
    assert_eq!(
        FanOut::new(0).unwrap_err(),
        ConfigError::Zero { field: "limit" }
    );
}

/// "yields each outcome, with a panic or a runtime cancellation as JoinError": a task its
/// runtime drops before its first poll is an outcome too, in both orders, and frees its slot.
async fn tasks_dropped_unpolled_are_reported_cancelled<R: Runtime>(rt: R) {
    for ordered in [false, true] {
        let lossy = DropsUnpolled {
            inner: rt.clone(),
            spawns: Arc::new(AtomicUsize::new(0)),
            // Inputs 1 and 2, then every third: more than the limit, so a lost slot that was
            // never freed would stop the fan-out taking inputs.
            lose: |n| n == 1 || n == 2 || n % 3 == 0,
        };
        let fan_out = FanOut::new(2).unwrap().runtime(lossy);
        let fan_out = if ordered { fan_out.ordered() } else { fan_out };
        let r = rt.clone();
        let results = fan_out.run_iter(0..12u32, move |i| {
            let r = r.clone();
            async move {
                r.sleep(Duration::from_millis(10)).await;
                i
            }
        });
        let results: Vec<_> = results.collect().await;
        assert_eq!(
            results.len(),
            12,
            "ordered {ordered}: one outcome per input"
        );
        let mut kept: Vec<u32> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        if !ordered {
            kept.sort_unstable();
        }
        assert_eq!(kept, [4, 5, 7, 8, 10, 11], "ordered {ordered}");
        let lost = results
            .iter()
            .filter(|r| matches!(r, Err(JoinError::Cancelled)))
            .count();
        assert_eq!(lost, 6, "ordered {ordered}: {results:?}");
        if ordered {
            let cancelled_at: Vec<usize> = (0..12).filter(|&i| results[i].is_err()).collect();
            assert_eq!(cancelled_at, [0, 1, 2, 3, 6, 9], "in input order");
        }
    }
}

#[test]
fn tasks_dropped_unpolled_on_every_runtime() {
    hang::without_hanging("a fan-out whose runtime loses tasks", || {
        on_every_runtime!(tasks_dropped_unpolled_are_reported_cancelled);
    });
}

#[tokio::test(start_paused = true)]
async fn dropping_the_stream_aborts_running_tasks() {
    let finished = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&finished);
    let mut results = FanOut::new(4).unwrap().run_iter(0..100u32, move |_| {
        let f = Arc::clone(&f);
        async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            f.fetch_add(1, SeqCst);
        }
    });
    results.next().await.unwrap().unwrap();
    drop(results);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        finished.load(SeqCst),
        4,
        "only the first batch ran; the refilled slot's task was aborted"
    );
}

#[tokio::test(start_paused = true)]
async fn local_variant_runs_not_send_work() {
    let shared = std::rc::Rc::new(std::cell::Cell::new(0));
    let out: Vec<u32> = FanOut::new(3)
        .unwrap()
        .ordered()
        .run_local(futures_util::stream::iter(0..6u32), |i| {
            let shared = std::rc::Rc::clone(&shared);
            async move {
                tokio::time::sleep(Duration::from_millis(u64::from(10 - i))).await;
                shared.set(shared.get() + 1);
                i
            }
        })
        .collect()
        .await;
    assert_eq!(out, [0, 1, 2, 3, 4, 5]);
    assert_eq!(shared.get(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_huge_limit_reserves_nothing_up_front() {
    let out: Vec<_> = FanOut::new(usize::MAX)
        .unwrap()
        .run_iter(0..10u32, |i| async move { i })
        .collect()
        .await;
    assert_eq!(out.len(), 10);
}
