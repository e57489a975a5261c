//! Stream operators and sources: limits, time, backpressure, order, on every runtime.

mod common;

use common::ms;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::{StreamExt, stream};
use proptest::prelude::*;
use tidewall::ConfigError;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime};
use tidewall::stream::{Keyed, KeyedMerge, MissedTicks, StreamOps, interval_on};
use tidewall::testing::Clocked;

/// A source that counts how many items were pulled from it.
fn counted<T>(
    items: impl IntoIterator<Item = T>,
    pulled: Arc<AtomicUsize>,
) -> impl Stream<Item = T> {
    stream::iter(items).inspect(move |_| {
        pulled.fetch_add(1, Ordering::SeqCst);
    })
}

async fn batches_by_count_and_time<R: Runtime>(rt: Clocked<R>) {
    // Items every 30 ms, batches of 5 or 100 ms after their first item.
    let rt2 = rt.clone();
    let source = stream::iter(0..10u32).then(move |n| {
        let rt = rt2.clone();
        async move {
            rt.sleep(ms(30)).await;
            n
        }
    });
    let start = rt.now();
    let mut batches = Box::pin(source.batch_on(&rt, 5, ms(100)).unwrap());
    let mut seen = Vec::new();
    while let Some(batch) = batches.next().await {
        seen.push((rt.now() - start, batch));
    }
    // The first item comes at 30 ms; the timer cuts the batch at 130 ms, before the 5th item
    // (at 150 ms) would have filled it.
    assert_eq!(seen[0], (ms(130), vec![0, 1, 2, 3]));
    let all: Vec<u32> = seen.iter().flat_map(|(_, b)| b.clone()).collect();
    assert_eq!(
        all,
        (0..10).collect::<Vec<_>>(),
        "every item once, in order"
    );
    assert!(seen.iter().all(|(_, b)| !b.is_empty() && b.len() <= 5));
}

#[test]
fn batch_by_count_and_time_on_every_runtime() {
    on_every_runtime!(batches_by_count_and_time);
}

#[test]
fn weighted_batches_and_heavy_items_alone() {
    futures_util::FutureExt::now_or_never(async {
        let words = ["aa", "bbb", "cccccccccc", "d", "ee", "fff"];
        let rt = Clocked::new(tidewall::rt::Tokio);
        let batches: Vec<Vec<&str>> = stream::iter(words)
            .batch_weighted_on(&rt, 5, |w: &&str| w.len() as u64, ms(10))
            .unwrap()
            .collect()
            .await;
        assert_eq!(
            batches,
            [
                vec!["aa", "bbb"],
                vec!["cccccccccc"],
                vec!["d", "ee"],
                vec!["fff"]
            ]
        );
    })
    .unwrap();
}

/// A time-only batch over a source that is always ready (each item takes 1 ms of the clock to
/// make) still ends when `max_wait` has passed, noticed within 16 items; and a batch that grew
/// large does not make every later batch reserve as much.
#[test]
fn a_busy_source_still_ends_time_batches_and_big_batches_do_not_stay_big() {
    let rt = Clocked::new(tidewall::rt::Tokio);
    let clock = rt.clone();
    let busy = stream::iter(0..200_u32).inspect(move |_| clock.clock().advance(ms(1)));
    let batches: Vec<Vec<u32>> = futures_util::FutureExt::now_or_never(
        busy.batch_on(&rt, usize::MAX, ms(10)).unwrap().collect(),
    )
    .expect("a ready source and a clock that only moves with it: no wait");
    assert!(batches.len() > 1, "one batch of {} items", batches[0].len());
    for batch in &batches[..batches.len() - 1] {
        assert!(
            (10..=17).contains(&batch.len()),
            "a batch of {}",
            batch.len()
        );
    }
    assert_eq!(
        batches.concat(),
        (0..200).collect::<Vec<_>>(),
        "nothing lost, in order"
    );

    let (tx, rx) = futures_channel::mpsc::unbounded::<u32>();
    let mut batches = Box::pin(rx.batch_on(&rt, 100_000, ms(10)).unwrap());
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    let mut next_batch = |send: u32| {
        for item in 0..send {
            tx.unbounded_send(item).unwrap();
        }
        loop {
            match batches.as_mut().poll_next(&mut cx) {
                Poll::Ready(Some(batch)) => return batch,
                Poll::Ready(None) => panic!("ended"),
                Poll::Pending => rt.clock().advance(ms(1)),
            }
        }
    };
    let big = next_batch(50_000);
    assert!(
        big.len() >= 10_000,
        "a burst makes a big batch: {}",
        big.len()
    );
    assert!(big.capacity() >= big.len());
    let mut received = big.len();
    while received < 50_000 {
        received += next_batch(0).len();
    }
    let one = next_batch(1);
    assert_eq!(one.len(), 1);
    assert!(
        one.capacity() <= 1024,
        "a batch of one reserved {}",
        one.capacity()
    );
}

#[test]
fn zero_limits_are_typed_errors_not_hangs() {
    let rt = Clocked::new(tidewall::rt::Tokio);
    let s = || stream::iter([1u8]);
    assert_eq!(
        s().batch_on(&rt, 0, ms(1)).err(),
        Some(ConfigError::Zero { field: "max_items" })
    );
    assert_eq!(
        s().batch_on(&rt, 1, Duration::ZERO).err(),
        Some(ConfigError::Zero { field: "max_wait" })
    );
    assert_eq!(
        s().batch_weighted_on(&rt, 0, |_: &u8| 1, ms(1)).err(),
        Some(ConfigError::Zero {
            field: "max_weight"
        })
    );
    assert_eq!(
        s().throttle_on(&rt, Duration::ZERO).err(),
        Some(ConfigError::Zero { field: "period" })
    );
    assert_eq!(
        s().timeout_each_on(&rt, Duration::ZERO).err(),
        Some(ConfigError::Zero { field: "timeout" })
    );
    assert!(matches!(
        s().par_map_on(&rt, 0, |x| async move { x }),
        Err(ConfigError::Zero { .. })
    ));
    assert!(matches!(
        s().par_map_local(0, |x| async move { x }),
        Err(ConfigError::Zero { .. })
    ));
    assert!(matches!(
        interval_on(&rt, Duration::ZERO, MissedTicks::Skip),
        Err(ConfigError::Zero { .. })
    ));
    assert!(tidewall::stream::generator::<u8, _, _>(0, |_| async {}).is_err());
}

#[test]
fn a_slow_consumer_pauses_the_producer() {
    futures_util::FutureExt::now_or_never(async {
        let pulled = Arc::new(AtomicUsize::new(0));
        let rt = Clocked::new(tidewall::rt::Tokio);
        let mut batches = Box::pin(
            counted(0..1_000_000u32, pulled.clone())
                .batch_on(&rt, 8, ms(10))
                .unwrap(),
        );
        let first = batches.next().await.unwrap();
        assert_eq!(first.len(), 8);
        assert!(
            pulled.load(Ordering::SeqCst) <= 9,
            "one batch plus at most one carried item"
        );
    })
    .unwrap();
}

proptest! {
    /// Batches never exceed their limits, every item arrives exactly once and in order.
    #[test]
    fn batches_respect_limits_and_order(
        weights in proptest::collection::vec(1u64..20, 0..200),
        max_weight in 1u64..40,
    ) {
        let rt = Clocked::new(tidewall::rt::Tokio);
        let items: Vec<(usize, u64)> = weights.iter().copied().enumerate().collect();
        let batches: Vec<Vec<(usize, u64)>> = futures_util::FutureExt::now_or_never(
            stream::iter(items.clone()).batch_weighted_on(&rt, max_weight, |i: &(usize, u64)| i.1, ms(5)).unwrap().collect(),
        )
        .unwrap();
        for batch in &batches {
            prop_assert!(!batch.is_empty());
            let total: u64 = batch.iter().map(|i| i.1).sum();
            prop_assert!(total <= max_weight || batch.len() == 1, "{batch:?}");
        }
        let flat: Vec<(usize, u64)> = batches.into_iter().flatten().collect();
        prop_assert_eq!(flat, items);
    }
}

async fn pacing<R: Runtime>(rt: Clocked<R>) {
    let start = rt.now();
    let throttled: Vec<Duration> = stream::iter(0..4)
        .throttle_on(&rt, ms(50))
        .unwrap()
        .map(|_| rt.now() - start)
        .collect()
        .await;
    assert_eq!(throttled, [ms(0), ms(50), ms(100), ms(150)]);

    let limiter = RateLimiter::builder(10, ms(1_000))
        .burst(3)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let start = rt.now();
    let limited: Vec<Duration> = stream::iter(0..5)
        .rate_limit(limiter)
        .map(|_| rt.now() - start)
        .collect()
        .await;
    assert_eq!(
        limited,
        [ms(0), ms(0), ms(0), ms(100), ms(200)],
        "a burst of 3, then one per 100 ms"
    );

    let rt2 = rt.clone();
    let gaps = stream::iter([10u64, 80, 10, 170]).then(move |d| {
        let rt = rt2.clone();
        async move {
            rt.sleep(ms(d)).await;
            d
        }
    });
    let out: Vec<Result<u64, _>> = gaps.timeout_each_on(&rt, ms(50)).unwrap().collect().await;
    // One `Elapsed` per gap, even for a gap of more than three timeouts.
    let elapsed = Err(tidewall::time::Elapsed);
    assert_eq!(out, [Ok(10), elapsed, Ok(80), Ok(10), elapsed, Ok(170)]);
}

#[test]
fn throttle_rate_limit_and_timeout_each_on_every_runtime() {
    on_every_runtime!(pacing);
}

async fn par_map_keeps_order_and_limit<R: Runtime>(rt: Clocked<R>) {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (running2, peak2, rt2) = (running.clone(), peak.clone(), rt.clone());
    let out: Vec<u64> = stream::iter(0..40u64)
        .par_map_on(&rt, 4, move |n| {
            let (running, peak, rt) = (running2.clone(), peak2.clone(), rt2.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                rt.sleep(ms(40 - n)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                n * 10
            }
        })
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(out, (0..40).map(|n| n * 10).collect::<Vec<_>>());
    assert!(peak.load(Ordering::SeqCst) <= 4);
    let panicked: Vec<bool> = stream::iter(0..3)
        .par_map_unordered_on(&rt, 2, |n| async move { assert_ne!(n, 1, "boom") })
        .unwrap()
        .map(|r| r.is_err())
        .collect()
        .await;
    assert_eq!(
        panicked.iter().filter(|&&p| p).count(),
        1,
        "the panic arrives as a value"
    );
}

#[test]
fn par_map_on_every_runtime() {
    on_every_runtime!(par_map_keeps_order_and_limit);
}

#[test]
fn prioritized_merge_serves_high_first_and_bounds_starvation() {
    futures_util::FutureExt::now_or_never(async {
        let biased: Vec<u8> = stream::iter([1u8; 5])
            .prioritized(stream::iter([0u8; 2]))
            .collect()
            .await;
        assert_eq!(biased, [1, 1, 1, 1, 1, 0, 0]);
        let fair: Vec<u8> = stream::iter([1u8; 5])
            .prioritized(stream::iter([0u8; 2]))
            .low_at_least_every(2)
            .unwrap()
            .collect()
            .await;
        assert_eq!(fair, [1, 1, 0, 1, 1, 0, 1]);
    })
    .unwrap();
}

/// A stream that is never ready, counting how often it is polled.
struct Idle(Arc<AtomicUsize>);
impl Stream for Idle {
    type Item = u32;
    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<u32>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Poll::Pending
    }
}

/// Runs a future to completion on a current-thread tokio runtime.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn keyed_merge_polls_only_the_streams_that_woke() {
    block_on(async {
        let polls = Arc::new(AtomicUsize::new(0));
        let mut merge: KeyedMerge<u32, Pin<Box<dyn Stream<Item = u32> + Send>>> = KeyedMerge::new();
        for key in 0..10_000 {
            merge.insert(key, Box::pin(Idle(polls.clone())));
        }
        merge.insert(99_999, Box::pin(stream::iter(0..1_000)));
        let mut items = 0;
        let mut ended = None;
        while ended.is_none() {
            match merge.next().await {
                Some(Keyed::Item(99_999, _)) => items += 1,
                Some(Keyed::Ended(key)) => ended = Some(key),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((items, ended), (1_000, Some(99_999)));
        // Each idle stream was polled once, when inserted; 1,000 ready items cost no more.
        assert_eq!(polls.load(Ordering::SeqCst), 10_000);
    });
}

async fn interval_missed_ticks<R: Runtime>(rt: Clocked<R>) {
    for (missed, expected) in [
        (MissedTicks::Burst, [100, 200, 300, 400, 500]),
        (MissedTicks::Delay, [100, 200, 300, 550, 650]),
        (MissedTicks::Skip, [100, 200, 300, 500, 600]),
    ] {
        let start = rt.now();
        let mut ticks = Box::pin(interval_on(&rt, ms(100), missed).unwrap());
        let mut at = Vec::new();
        for i in 0..5 {
            let tick = ticks.next().await.unwrap();
            at.push(u64::try_from((tick - start).as_millis()).unwrap());
            if i == 1 {
                // The consumer is busy for 250 ms after the second tick: tick 300 is late and
                // tick 400 is missed.
                rt.sleep(ms(250)).await;
            }
        }
        assert_eq!(at, expected, "{missed:?}");
    }
}

#[test]
fn interval_missed_tick_behaviours_on_every_runtime() {
    on_every_runtime!(interval_missed_ticks);
}

/// Jitter delays each wake-up without moving the schedule, in every mode: a consumer that is
/// never late gets ticks at `start + k × period` exactly, however much jitter delayed it (up
/// to more than a period, which is not lateness either).
async fn interval_jitter_never_moves_the_schedule<R: Runtime>(rt: Clocked<R>) {
    for missed in [MissedTicks::Burst, MissedTicks::Delay, MissedTicks::Skip] {
        for jitter in [ms(30), ms(250)] {
            let start = rt.now();
            let mut ticks = Box::pin(
                interval_on(&rt, ms(100), missed)
                    .unwrap()
                    .jitter(jitter, 7)
                    .unwrap(),
            );
            for k in 1..=20_u32 {
                let tick = ticks.next().await.unwrap();
                assert_eq!(
                    tick,
                    start + ms(100) * k,
                    "{missed:?}, jitter {jitter:?}, tick {k}"
                );
                assert!(
                    rt.now() <= tick + jitter,
                    "{missed:?}: woken within its jitter"
                );
            }
        }
    }
}

#[test]
fn interval_jitter_never_moves_the_schedule_on_every_runtime() {
    on_every_runtime!(interval_jitter_never_moves_the_schedule);
}

/// `start + nanos` (nanos as wide as any stall).
fn after_nanos(start: std::time::Instant, nanos: u128) -> std::time::Instant {
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap();
    start + Duration::new(secs, u32::try_from(nanos % 1_000_000_000).unwrap())
}

/// With `Skip`, a stall of any length (a fraction of a period to a century, across 2^32
/// periods, where a 32-bit count of skipped periods saturated) gives one late tick at once,
/// the earliest missed point, then the first point of the schedule after it, on time.
async fn interval_skip_after_any_stall<R: Runtime>(rt: Clocked<R>) {
    const CENTURY_NANOS: u128 = 100 * 365 * 86_400 * 1_000_000_000;
    for period in [Duration::from_nanos(1), ms(1)] {
        let p = period.as_nanos();
        for stall in [
            p / 2,
            p,
            p * 3 / 2,
            p * 250,
            p * u128::from(u32::MAX),
            p * ((1 << 32) + 1) + p / 3,
            p * ((1 << 33) + 7),
            p * (1 << 40),
            CENTURY_NANOS,
        ] {
            let case = format!("period {period:?}, stall {stall} ns");
            let start = rt.now();
            let mut ticks = Box::pin(interval_on(&rt, period, MissedTicks::Skip).unwrap());
            assert_eq!(ticks.next().await, Some(after_nanos(start, p)), "{case}");
            // The consumer is busy (the clock jumps: no timer is pending).
            rt.clock().advance_to(after_nanos(start, p + stall));
            let busy_until = rt.now();
            let late = ticks.next().await.unwrap();
            assert_eq!(
                late,
                after_nanos(start, 2 * p),
                "{case}: the earliest missed point"
            );
            let delivered_at = rt.now();
            assert_eq!(
                delivered_at,
                busy_until.max(late),
                "{case}: at once when late"
            );
            let resume = ((delivered_at - start).as_nanos() / p + 1) * p;
            for k in 0..3 {
                let tick = ticks.next().await.unwrap();
                assert_eq!(tick, after_nanos(start, resume + k * p), "{case}: tick {k}");
                assert_eq!(rt.now(), tick, "{case}: on time, not from the past");
            }
        }
    }
}

#[test]
fn interval_skip_survives_stalls_of_any_length_on_every_runtime() {
    on_every_runtime!(interval_skip_after_any_stall);
}

#[test]
fn generator_applies_backpressure() {
    block_on(async {
        let produced = Arc::new(AtomicUsize::new(0));
        let counter = produced.clone();
        let mut numbers = Box::pin(
            tidewall::stream::generator(4, move |mut out| async move {
                for n in 0..100u32 {
                    counter.fetch_add(1, Ordering::SeqCst);
                    if !out.yield_(n).await {
                        return;
                    }
                }
            })
            .unwrap(),
        );
        assert_eq!(numbers.next().await, Some(0));
        assert!(
            produced.load(Ordering::SeqCst) <= 6,
            "at most the buffer plus the item in hand"
        );
        let rest: Vec<u32> = numbers.collect().await;
        assert_eq!(rest, (1..100).collect::<Vec<_>>());
    });
}

async fn par_map_progresses_while_the_consumer_is_busy<R: Runtime>(rt: Clocked<R>) {
    let finished = Arc::new(AtomicUsize::new(0));
    let pulled = Arc::new(AtomicUsize::new(0));
    let (done, rt2) = (finished.clone(), rt.clone());
    let mut results = Box::pin(
        counted(0..100u64, pulled.clone())
            .par_map_on(&rt, 4, move |n| {
                let (done, rt) = (done.clone(), rt2.clone());
                async move {
                    rt.sleep(ms(10)).await;
                    done.fetch_add(1, Ordering::SeqCst);
                    n
                }
            })
            .unwrap(),
    );
    assert_eq!(results.next().await.unwrap().unwrap(), 0);
    // The consumer is busy for a second. Meanwhile the work in flight finishes (the 4 slots
    // were refilled when item 0 was delivered), and no more is taken from the source than
    // the one delivered plus the limit (backpressure).
    rt.sleep(ms(1_000)).await;
    assert_eq!(
        pulled.load(Ordering::SeqCst),
        5,
        "1 delivered + 4 in flight"
    );
    assert_eq!(
        finished.load(Ordering::SeqCst),
        5,
        "work went on without the consumer"
    );
    let rest: Vec<u64> = results.map(|r| r.unwrap()).collect().await;
    assert_eq!(rest, (1..100).collect::<Vec<_>>());
}

#[test]
fn par_map_works_while_the_consumer_is_busy_on_every_runtime() {
    on_every_runtime!(par_map_progresses_while_the_consumer_is_busy);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Ordered `par_map` delivers every item exactly once, in input order, whatever the
    /// latencies and the limit; the unordered one delivers the same multiset.
    #[test]
    fn par_map_delivers_each_item_once_in_order(
        latencies in proptest::collection::vec(0u64..50, 0..60),
        limit in 1usize..8,
    ) {
        let input: Vec<(usize, u64)> = latencies.into_iter().enumerate().collect();
        let (ordered, mut unordered) = common::on_tokio_current_thread(|rt| {
            let input = input.clone();
            async move {
                let work = |rt: Clocked<tidewall::rt::Tokio>| move |(i, d): (usize, u64)| {
                    let rt = rt.clone();
                    async move {
                        rt.sleep(ms(d)).await;
                        i
                    }
                };
                let ordered: Vec<usize> = stream::iter(input.clone()).par_map_on(&rt, limit, work(rt.clone())).unwrap().map(Result::unwrap).collect().await;
                let unordered: Vec<usize> = stream::iter(input).par_map_unordered_on(&rt, limit, work(rt.clone())).unwrap().map(Result::unwrap).collect().await;
                (ordered, unordered)
            }
        });
        let expected: Vec<usize> = (0..input.len()).collect();
        prop_assert_eq!(&ordered, &expected);
        unordered.sort_unstable();
        prop_assert_eq!(unordered, expected);
    }
}
