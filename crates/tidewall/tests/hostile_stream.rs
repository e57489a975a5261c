//! Hostile black-box tests of `tidewall::stream` and `tidewall::fs`, written from the rustdoc
//! alone: operator bounds (concurrency, batch size and weight, pacing), backpressure (how far an
//! upstream is pulled ahead), ordering and conservation of items, zero/huge configuration,
//! line reading at the length limit and over hostile readers, generators and intervals dropped
//! at seeded random points, `follow` on a file changing under it, and `fs::write_atomic`
//! dropped at every await point.

#[path = "common/spawn_adapters.rs"]
mod spawn_adapters;

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::io::AsyncRead;
use futures_util::task::noop_waker_ref;
use futures_util::{FutureExt, Stream, StreamExt, stream};
use spawn_adapters::{Counting, PanicAt};
use tidewall::ConfigError;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Tokio};
use tidewall::stream::{
    BlockingReader, Keyed, KeyedMerge, LineReader, LinesError, MAX_BUFFER, MissedTicks, Overlong,
    StreamOps, WatchError, follow_on, generator, interval_on, watch_dir_on,
};
use tidewall_core::rng::SplitMix64;
use tokio::time::Instant;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn cx() -> Context<'static> {
    Context::from_waker(noop_waker_ref())
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("fits")
}

/// Counts how many items were pulled from `s`.
fn counted<S: Stream>(s: S, pulls: &Arc<AtomicUsize>) -> impl Stream<Item = S::Item> {
    let pulls = Arc::clone(pulls);
    s.inspect(move |_| {
        pulls.fetch_add(1, SeqCst);
    })
}

/// A stream whose items become ready at the given offsets (from `start`).
fn timed<T: Send + 'static>(
    start: Instant,
    items: Vec<(u64, T)>,
) -> impl Stream<Item = T> + Send + 'static {
    stream::iter(items).then(move |(at, item)| async move {
        tokio::time::sleep_until(start + ms(at)).await;
        item
    })
}

fn is_zero<T>(r: &Result<T, ConfigError>) -> bool {
    matches!(r, Err(ConfigError::Zero { .. }))
}

fn is_out_of_range<T>(r: &Result<T, ConfigError>) -> bool {
    matches!(r, Err(ConfigError::OutOfRange { .. }))
}

// ---------------------------------------------------------------------------------------------
// Configuration: "Bad input — a zero limit, size, weight or period — is a ConfigError, never a
// stream that hangs."
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn zero_limits_sizes_and_periods_are_config_errors_for_every_operator() {
    let s = || stream::iter(0..3u32);
    assert!(is_zero(&s().batch(0, ms(10))));
    assert!(is_zero(&s().batch(3, Duration::ZERO)));
    assert!(is_zero(&s().batch_weighted(0, |_: &u32| 1, ms(10))));
    assert!(is_zero(&s().batch_weighted(5, |_: &u32| 1, Duration::ZERO)));
    assert!(is_zero(&s().throttle(Duration::ZERO)));
    assert!(is_zero(&s().timeout_each(Duration::ZERO)));
    assert!(is_zero(&s().par_map(0, |n| async move { n })));
    assert!(is_zero(&s().par_map_unordered(0, |n| async move { n })));
    assert!(is_zero(&s().par_map_local(0, |n| async move { n })));
    assert!(is_zero(&interval_on(
        &Tokio,
        Duration::ZERO,
        MissedTicks::Skip
    )));
    assert!(is_zero(&generator::<u32, _, _>(0, |_y| async {})));
    assert!(is_zero(&s().prioritized(s()).low_at_least_every(0)));
    assert!(is_zero(&LineReader::new(&b""[..], 0, 10, Overlong::Error)));
    assert!(is_zero(&LineReader::new(&b""[..], 10, 0, Overlong::Error)));
    assert!(is_zero(&BlockingReader::new(
        Tokio,
        io::Cursor::new(Vec::new()),
        0
    )));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    assert!(is_zero(&follow_on(&Tokio, &path, Duration::ZERO, 10, true)));
    assert!(is_zero(&follow_on(&Tokio, &path, ms(10), 0, true)));
    assert!(matches!(
        watch_dir_on(&Tokio, dir.path(), Duration::ZERO),
        Err(WatchError::Config(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn oversized_buffers_are_out_of_range_errors_not_aborts() {
    // "ConfigError::OutOfRange when the buffer (buffer, or max_line + 1 if larger) would exceed
    // MAX_BUFFER" — including a max_line whose `+ 1` overflows.
    assert!(is_out_of_range(&LineReader::new(
        &b""[..],
        MAX_BUFFER + 1,
        10,
        Overlong::Error
    )));
    assert!(is_out_of_range(&LineReader::new(
        &b""[..],
        10,
        MAX_BUFFER,
        Overlong::Error
    )));
    assert!(is_out_of_range(&LineReader::new(
        &b""[..],
        10,
        usize::MAX,
        Overlong::Skip
    )));
    assert!(is_out_of_range(&LineReader::new(
        &b""[..],
        usize::MAX,
        10,
        Overlong::Skip
    )));
    assert!(is_out_of_range(&BlockingReader::new(
        Tokio,
        io::Cursor::new(Vec::new()),
        MAX_BUFFER + 1
    )));
    assert!(is_out_of_range(&BlockingReader::new(
        Tokio,
        io::Cursor::new(Vec::new()),
        usize::MAX
    )));
    // "ConfigError::OutOfRange for one over 2^30."
    assert!(is_out_of_range(&generator::<u8, _, _>(
        (1 << 30) + 1,
        |_y| async {}
    )));
    assert!(is_out_of_range(&generator::<u8, _, _>(
        usize::MAX,
        |_y| async {}
    )));
    // Jitter: "ConfigError::DurationOverflow for a jitter beyond u64 nanoseconds."
    let interval = interval_on(&Tokio, ms(10), MissedTicks::Skip).unwrap();
    assert!(matches!(
        interval.jitter(Duration::MAX, 1),
        Err(ConfigError::DurationOverflow { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn generator_at_the_documented_maximum_capacity_works_for_large_items() {
    // 2^30 is accepted ("OutOfRange for one over 2^30"); the items are 1 KiB each, so a
    // buffer allocated up front would be a terabyte.
    let g = generator::<[u8; 1024], _, _>(1 << 30, |mut y| async move {
        for n in 0..3u8 {
            if !y.yield_([n; 1024]).await {
                return;
            }
        }
    })
    .unwrap();
    let got: Vec<u8> = g.map(|a| a[0]).collect().await;
    assert_eq!(got, [0, 1, 2]);
}

// ---------------------------------------------------------------------------------------------
// par_map: "at most `limit` at a time, delivering in input order. Work keeps running while the
// consumer is busy; the source is pulled only when a slot is free; a panic arrives as
// Err(JoinError::Panicked)." / "at most `limit` items are taken and not yet delivered".
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
    started: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.max.fetch_max(now, SeqCst);
        self.started.fetch_add(1, SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, SeqCst);
    }
}

/// `value` after `delay_ms` of virtual time, counted in `gauge` while it sleeps.
fn gauged<T: Send + 'static>(
    gauge: &Arc<Gauge>,
    delay_ms: u64,
    value: T,
) -> impl Future<Output = T> + Send + use<T> {
    let gauge = Arc::clone(gauge);
    async move {
        gauge.enter();
        tokio::time::sleep(ms(delay_ms)).await;
        gauge.leave();
        value
    }
}

#[tokio::test(start_paused = true)]
async fn par_map_never_exceeds_limit_and_delivers_in_input_order_under_random_delays() {
    for seed in 0..6u64 {
        let mut rng = SplitMix64::new(seed);
        let limit = to_usize(rng.between(1, 7));
        let n = 200u64;
        let delays: Vec<u64> = (0..n).map(|_| rng.below_or_equal(50)).collect();
        let consumer: Vec<u64> = (0..n).map(|_| rng.below_or_equal(30)).collect();
        let gauge = Arc::new(Gauge::default());
        let pulls = Arc::new(AtomicUsize::new(0));
        let g = Arc::clone(&gauge);
        let mut out = std::pin::pin!(
            counted(stream::iter(0..n), &pulls)
                .par_map(limit, move |i| gauged(&g, delays[to_usize(i)], i))
                .unwrap()
        );
        let mut got = Vec::new();
        while let Some(r) = out.next().await {
            got.push(r.expect("no panic"));
            let taken = pulls.load(SeqCst);
            assert!(
                taken - got.len() <= limit,
                "seed {seed}: {taken} pulled, {} delivered, limit {limit}",
                got.len()
            );
            tokio::time::sleep(ms(consumer[got.len() - 1])).await;
        }
        assert_eq!(got, (0..n).collect::<Vec<_>>(), "seed {seed}");
        assert!(gauge.max.load(SeqCst) <= limit, "seed {seed}");
        assert_eq!(gauge.started.load(SeqCst), to_usize(n));
    }
}

#[tokio::test(start_paused = true)]
async fn par_map_unordered_never_exceeds_limit_and_loses_or_duplicates_nothing() {
    for seed in 10..16u64 {
        let mut rng = SplitMix64::new(seed);
        let limit = to_usize(rng.between(1, 9));
        let n = 300u64;
        let delays: Vec<u64> = (0..n).map(|_| rng.below_or_equal(40)).collect();
        let gauge = Arc::new(Gauge::default());
        let pulls = Arc::new(AtomicUsize::new(0));
        let g = Arc::clone(&gauge);
        let mut out = std::pin::pin!(
            counted(stream::iter(0..n), &pulls)
                .par_map_unordered(limit, move |i| gauged(&g, delays[to_usize(i)], i))
                .unwrap()
        );
        let mut got = Vec::new();
        while let Some(r) = out.next().await {
            got.push(r.expect("no panic"));
            assert!(pulls.load(SeqCst) - got.len() <= limit, "seed {seed}");
            if rng.below_or_equal(3) == 0 {
                tokio::time::sleep(ms(rng.below_or_equal(100))).await;
            }
        }
        got.sort_unstable();
        assert_eq!(got, (0..n).collect::<Vec<_>>(), "seed {seed}");
        assert!(gauge.max.load(SeqCst) <= limit, "seed {seed}");
    }
}

#[tokio::test(start_paused = true)]
async fn par_map_pulls_no_more_than_limit_ahead_of_a_consumer_that_stops_pulling() {
    let pulls = Arc::new(AtomicUsize::new(0));
    let gauge = Arc::new(Gauge::default());
    let g = Arc::clone(&gauge);
    let mut out = std::pin::pin!(
        counted(stream::iter(0..1000u32), &pulls)
            .par_map(4, move |i| gauged(&g, 1, i))
            .unwrap()
    );
    assert_eq!(out.next().await.unwrap().unwrap(), 0);
    // The consumer goes away for an hour: the spawned work finishes, nothing more is pulled.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let pulled = pulls.load(SeqCst);
    assert!(
        pulled <= 1 + 4,
        "{pulled} pulled with 1 delivered and limit 4"
    );
    // "Work keeps running while the consumer is busy": everything taken has finished.
    assert_eq!(gauge.now.load(SeqCst), 0);
    assert_eq!(gauge.started.load(SeqCst), pulled);
    for want in 1..=10u32 {
        assert_eq!(out.next().await.unwrap().unwrap(), want);
        assert!(pulls.load(SeqCst) <= to_usize(u64::from(want)) + 1 + 4);
    }
}

#[tokio::test(start_paused = true)]
async fn par_map_next_dropped_at_random_points_loses_nothing_and_keeps_the_bound() {
    let mut rng = SplitMix64::new(101);
    let delays: Vec<u64> = (0..200).map(|_| rng.below_or_equal(30)).collect();
    let gauge = Arc::new(Gauge::default());
    let g = Arc::clone(&gauge);
    let mut out = std::pin::pin!(
        stream::iter(0..200u64)
            .par_map(6, move |i| gauged(&g, delays[to_usize(i)], i))
            .unwrap()
    );
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(ms(rng.below_or_equal(15)), out.next()).await {
            Ok(Some(r)) => got.push(r.unwrap()),
            Ok(None) => break,
            Err(_) => {}
        }
    }
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    assert!(gauge.max.load(SeqCst) <= 6);
}

#[tokio::test(start_paused = true)]
async fn par_map_panics_arrive_as_errors_in_place_and_the_rest_still_arrive_in_order() {
    let out: Vec<_> = stream::iter(0..40u32)
        .par_map(3, |i| async move {
            tokio::time::sleep(ms(u64::from(40 - i))).await;
            assert!(i % 7 != 3, "boom {i}");
            i
        })
        .unwrap()
        .collect()
        .await;
    assert_eq!(out.len(), 40);
    for (i, r) in (0..40u32).zip(&out) {
        if i % 7 == 3 {
            assert!(r.is_err(), "item {i} panicked: {r:?}");
        } else {
            assert_eq!(r.as_ref().ok(), Some(&i));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn par_map_with_a_huge_limit_runs_everything_at_once_without_preallocating() {
    let gauge = Arc::new(Gauge::default());
    let g = Arc::clone(&gauge);
    let out: Vec<_> = stream::iter(0..100u32)
        .par_map(usize::MAX, move |i| gauged(&g, 10, i))
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(out, (0..100).collect::<Vec<_>>());
    assert_eq!(gauge.max.load(SeqCst), 100);
}

#[tokio::test(start_paused = true)]
async fn par_map_unordered_and_local_accept_a_usize_max_limit() {
    let mut got: Vec<u32> = stream::iter(0..50u32)
        .par_map_unordered(usize::MAX, |i| async move {
            tokio::time::sleep(ms(u64::from(50 - i))).await;
            i
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(got, (0..50).rev().collect::<Vec<_>>(), "completion order");
    got = stream::iter(0..50u32)
        .par_map_local(usize::MAX, |i| async move {
            tokio::time::sleep(ms(u64::from(50 - i))).await;
            i
        })
        .unwrap()
        .collect()
        .await;
    assert_eq!(got, (0..50).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn par_map_local_bounds_concurrency_and_preserves_order_with_not_send_work() {
    let now = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let max = std::rc::Rc::new(std::cell::Cell::new(0usize));
    let mut rng = SplitMix64::new(77);
    let delays: Vec<u64> = (0..100).map(|_| rng.below_or_equal(20)).collect();
    let (n2, m2) = (now.clone(), max.clone());
    let out: Vec<u32> = stream::iter(0..100u32)
        .par_map_local(5, move |i| {
            let (n, m) = (n2.clone(), m2.clone());
            let d = delays[usize::try_from(i).unwrap()];
            async move {
                n.set(n.get() + 1);
                m.set(m.get().max(n.get()));
                tokio::time::sleep(ms(d)).await;
                n.set(n.get() - 1);
                i
            }
        })
        .unwrap()
        .collect()
        .await;
    assert_eq!(out, (0..100).collect::<Vec<_>>());
    assert!(
        max.get() <= 5 && max.get() >= 2,
        "max in flight {}",
        max.get()
    );
}

#[tokio::test(start_paused = true)]
async fn par_map_dropped_mid_stream_does_not_lose_the_caller_or_panic() {
    let gauge = Arc::new(Gauge::default());
    let g = Arc::clone(&gauge);
    let mut rng = SplitMix64::new(5);
    for _ in 0..20 {
        let g = Arc::clone(&g);
        let take = to_usize(rng.below_or_equal(10));
        let mut out = Box::pin(
            stream::iter(0..50u32)
                .par_map(3, move |i| gauged(&g, 5, i))
                .unwrap(),
        );
        for want in 0..take {
            assert_eq!(
                out.next().await.unwrap().unwrap(),
                u32::try_from(want).unwrap()
            );
        }
        drop(out);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(gauge.now.load(SeqCst), 0, "work still running after drop");
}

// ---------------------------------------------------------------------------------------------
// batch / batch_weighted: "A batch is emitted when it is full (the next item would not fit),
// when max_wait has passed since its first item arrived, or when the stream ends (with what it
// holds). An item heavier than max_weight on its own is emitted alone, in a batch of one. Empty
// batches are never emitted." "0 counts as 1."
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn batch_by_count_flushes_the_remainder_at_end_and_never_emits_empty_batches() {
    for (n, max) in [(0u32, 3usize), (1, 1), (6, 3), (7, 3), (5, 100), (10, 1)] {
        let got: Vec<Vec<u32>> = stream::iter(0..n)
            .batch(max, ms(10))
            .unwrap()
            .collect()
            .await;
        let flat: Vec<u32> = got.iter().flatten().copied().collect();
        assert_eq!(flat, (0..n).collect::<Vec<_>>());
        assert!(got.iter().all(|b| !b.is_empty() && b.len() <= max));
        // Always-ready source: every batch but the last is full.
        for b in got.iter().rev().skip(1) {
            assert_eq!(b.len(), max, "{got:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn batch_weighted_respects_weight_counts_zero_as_one_and_isolates_heavy_items() {
    for seed in 0..8u64 {
        let mut rng = SplitMix64::new(seed);
        let max = rng.between(1, 12);
        let items: Vec<u64> = (0..400).map(|_| rng.below_or_equal(max + 5)).collect();
        let got: Vec<Vec<u64>> = stream::iter(items.clone())
            .batch_weighted(max, |w: &u64| *w, Duration::from_secs(3600))
            .unwrap()
            .collect()
            .await;
        let flat: Vec<u64> = got.iter().flatten().copied().collect();
        assert_eq!(flat, items, "seed {seed}: lost, duplicated or reordered");
        let weight = |b: &[u64]| b.iter().map(|w| (*w).max(1)).sum::<u64>();
        for (i, b) in got.iter().enumerate() {
            assert!(!b.is_empty());
            assert!(
                weight(b) <= max || b.len() == 1,
                "seed {seed}: batch {b:?} over {max}"
            );
            // Full: the next item would not have fitted (the source is always ready).
            if let Some(next) = got.get(i + 1) {
                assert!(
                    weight(b) + next[0].max(1) > max,
                    "seed {seed}: {b:?} emitted though {} fitted (max {max})",
                    next[0]
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn batch_weighted_zero_weight_items_are_bounded_by_max_weight_as_count() {
    let got: Vec<Vec<u8>> = stream::iter(vec![0u8; 10])
        .batch_weighted(4, |_: &u8| 0, ms(5))
        .unwrap()
        .collect()
        .await;
    let sizes: Vec<usize> = got.iter().map(Vec::len).collect();
    assert_eq!(sizes, [4, 4, 2]);
}

// Docs (`StreamOps::batch_weighted`): "Groups items into batches whose total `weigh(item)` stays
// within `max_weight`". FAILS: the running total overflows (debug: panic in batch.rs).
#[tokio::test(start_paused = true)]
async fn batch_weighted_near_u64_max_weights_do_not_overflow_the_running_total() {
    let max = u64::MAX;
    let items = vec![max, 1, max - 1, 1, 1, max / 2 + 1, max / 2 + 1];
    let got: Vec<Vec<u64>> = stream::iter(items)
        .batch_weighted(max, |w: &u64| *w, ms(10))
        .unwrap()
        .collect()
        .await;
    assert_eq!(
        got,
        [
            vec![max],
            vec![1, max - 1],
            vec![1, 1, max / 2 + 1],
            vec![max / 2 + 1],
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn batch_weighted_an_item_of_weight_u64_max_after_a_light_one_is_emitted_alone() {
    // A user marking an item "always alone" with the largest weight there is.
    let got: Vec<Vec<u64>> = stream::iter(vec![1u64, u64::MAX, 2, 3])
        .batch_weighted(1000, |w: &u64| *w, ms(10))
        .unwrap()
        .collect()
        .await;
    assert_eq!(got, [vec![1], vec![u64::MAX], vec![2, 3]]);
}

#[tokio::test(start_paused = true)]
async fn batch_with_a_usize_max_count_does_not_preallocate() {
    let got: Vec<Vec<u32>> = stream::iter(0..5u32)
        .batch(usize::MAX, ms(10))
        .unwrap()
        .collect()
        .await;
    assert_eq!(got, [vec![0, 1, 2, 3, 4]]);
}

#[tokio::test(start_paused = true)]
async fn batch_timeout_counts_from_the_first_item_and_flushes_partial_batches() {
    let start = Instant::now();
    let src = timed(
        start,
        vec![(0, 0u32), (5, 1), (9, 2), (15, 3), (30, 4), (31, 5)],
    );
    let mut batches = std::pin::pin!(src.batch(10, ms(10)).unwrap());
    let mut got = Vec::new();
    while let Some(b) = batches.next().await {
        got.push((start.elapsed(), b));
    }
    assert_eq!(
        got,
        [
            (ms(10), vec![0, 1, 2]),
            (ms(25), vec![3]),
            (ms(31), vec![4, 5]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn batch_timer_restarts_after_a_batch_emitted_full() {
    // [0, 1, 2] is full at 2 ms; the next batch's clock starts at its own first item (9 ms),
    // so it is due at 19 ms, not at the 10 ms of the batch before.
    let start = Instant::now();
    let src = timed(
        start,
        vec![(0, 0u32), (1, 1), (2, 2), (9, 3), (15, 4), (40, 5)],
    );
    let mut batches = std::pin::pin!(src.batch(3, ms(10)).unwrap());
    let mut got = Vec::new();
    while let Some(b) = batches.next().await {
        got.push((start.elapsed(), b));
    }
    assert_eq!(
        got,
        [
            (ms(2), vec![0, 1, 2]),
            (ms(19), vec![3, 4]),
            (ms(40), vec![5]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn batch_emits_nothing_during_hours_of_idleness_then_splits_the_burst() {
    let start = Instant::now();
    let hours = 3 * 3_600_000;
    let mut items = vec![(0, 0u32)];
    items.extend((1..=7).map(|i| (hours, i)));
    let mut batches = std::pin::pin!(
        timed(start, items)
            .batch(3, Duration::from_secs(1))
            .unwrap()
    );
    let mut got = Vec::new();
    while let Some(b) = batches.next().await {
        got.push((start.elapsed(), b));
    }
    let h = ms(hours);
    assert_eq!(
        got,
        [
            (ms(1000), vec![0]),
            (h, vec![1, 2, 3]),
            (h, vec![4, 5, 6]),
            (h, vec![7]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn batch_pulls_at_most_one_batch_plus_one_item_ahead() {
    let pulls = Arc::new(AtomicUsize::new(0));
    let mut batches = std::pin::pin!(
        counted(stream::iter(0u64..), &pulls)
            .batch(4, ms(10))
            .unwrap()
    );
    let mut delivered = 0;
    for round in 0..5 {
        let b = batches.next().await.unwrap();
        assert_eq!(b.len(), 4);
        assert_eq!(b[0], round * 4, "items lost or reordered");
        delivered += b.len();
        // The consumer idles: nothing more must be pulled meanwhile.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let pulled = pulls.load(SeqCst);
        assert!(
            pulled <= delivered + 1,
            "{pulled} pulled, {delivered} delivered"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn batch_of_a_huge_count_over_an_always_ready_source_yields_to_the_executor() {
    // "Source items taken per poll_next before yielding to the executor (a huge batch over an
    // always-ready source must not monopolize its task)."
    let pulls = Arc::new(AtomicUsize::new(0));
    let max = 5_000_000;
    let mut batches = std::pin::pin!(
        counted(stream::repeat(0u8), &pulls)
            .batch(max, Duration::from_secs(1))
            .unwrap()
    );
    let first = batches.as_mut().poll_next(&mut cx());
    assert!(
        first.is_pending(),
        "one poll must not fill a batch of {max}"
    );
    assert!(pulls.load(SeqCst) < max);
}

#[tokio::test(start_paused = true)]
async fn batch_with_a_centuries_long_wait_batches_by_count_and_end_and_refuses_duration_max() {
    // Duration::MAX is refused with a typed error (not a panic when the deadline is computed).
    assert!(matches!(
        stream::iter(0..5u32).batch(2, Duration::MAX),
        Err(ConfigError::DurationOverflow { .. })
    ));
    let centuries = Duration::from_secs(500 * 365 * 86_400);
    let got: Vec<Vec<u32>> = stream::iter(0..5u32)
        .batch(2, centuries)
        .unwrap()
        .collect()
        .await;
    assert_eq!(got, [vec![0, 1], vec![2, 3], vec![4]]);
    // A pending source with a partial batch: no panic, just waiting.
    let src = stream::iter([1u32]).chain(stream::pending());
    let mut b = std::pin::pin!(src.batch(2, centuries).unwrap());
    let r = tokio::time::timeout(Duration::from_secs(86_400 * 365), b.next()).await;
    assert!(r.is_err(), "no batch expected: {r:?}");
}

#[tokio::test(start_paused = true)]
async fn batch_weighted_carried_over_item_starts_its_own_max_wait_clock() {
    // [A(3), B(3)] with max weight 5: [A] is full once B comes, B is carried over; B "arrived"
    // at 0, so its batch is due at max_wait, not when the next item (much later) shows up.
    let start = Instant::now();
    let src = timed(start, vec![(0, 3u64), (0, 3), (1000, 1)]);
    let mut batches = std::pin::pin!(src.batch_weighted(5, |w: &u64| *w, ms(10)).unwrap());
    let mut got = Vec::new();
    while let Some(b) = batches.next().await {
        got.push((start.elapsed(), b));
    }
    assert_eq!(
        got,
        [(ms(0), vec![3]), (ms(10), vec![3]), (ms(1000), vec![1])]
    );
}

#[tokio::test(start_paused = true)]
async fn batch_next_dropped_at_random_points_loses_and_reorders_nothing() {
    let mut rng = SplitMix64::new(81);
    let start = Instant::now();
    let mut t = 0;
    let items: Vec<(u64, u32)> = (0..300u32)
        .map(|i| {
            t += rng.below_or_equal(7);
            (t, i)
        })
        .collect();
    let mut batches = std::pin::pin!(timed(start, items).batch(5, ms(9)).unwrap());
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(ms(rng.below_or_equal(12)), batches.next()).await {
            Ok(Some(b)) => {
                assert!(!b.is_empty() && b.len() <= 5);
                got.extend(b);
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    assert_eq!(got, (0..300).collect::<Vec<_>>());
}

// ---------------------------------------------------------------------------------------------
// throttle: "No burst: after an item, the next is delivered no earlier than period later. The
// source is not polled while the throttle waits, so it is paused, not buffered."
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn throttle_spaces_items_and_does_not_burst_after_hours_of_idleness() {
    let start = Instant::now();
    let h = 2 * 3_600_000;
    let items = vec![(0, 0u32), (h, 1), (h, 2), (h, 3), (h + 1000, 4)];
    let mut out = std::pin::pin!(timed(start, items).throttle(ms(100)).unwrap());
    let mut times = Vec::new();
    while let Some(i) = out.next().await {
        times.push((i, start.elapsed()));
    }
    assert_eq!(
        times,
        [
            (0, ms(0)),
            (1, ms(h)),
            (2, ms(h + 100)),
            (3, ms(h + 200)),
            (4, ms(h + 1000)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn throttle_dropping_next_while_waiting_loses_nothing_and_pulls_nothing_ahead() {
    let pulls = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut out = std::pin::pin!(
        counted(stream::iter(0..20u32), &pulls)
            .throttle(ms(100))
            .unwrap()
    );
    let mut rng = SplitMix64::new(3);
    let mut got = Vec::new();
    let mut last: Option<Duration> = None;
    while got.len() < 20 {
        let wait = ms(rng.below_or_equal(120));
        if let Ok(item) = tokio::time::timeout(wait, out.next()).await {
            let now = start.elapsed();
            if let Some(prev) = last {
                assert!(now - prev >= ms(100), "items {prev:?} and {now:?}");
            }
            last = Some(now);
            got.push(item.unwrap());
        }
        assert!(pulls.load(SeqCst) <= got.len() + 1, "buffered ahead");
    }
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    assert!(out.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn throttle_with_a_centuries_long_period_delivers_the_first_item_then_waits() {
    assert!(matches!(
        stream::iter(0..3u32).throttle(Duration::MAX),
        Err(ConfigError::DurationOverflow { .. })
    ));
    let centuries = Duration::from_secs(500 * 365 * 86_400);
    let mut out = std::pin::pin!(stream::iter(0..3u32).throttle(centuries).unwrap());
    assert_eq!(out.next().await, Some(0));
    let r = tokio::time::timeout(Duration::from_secs(86_400 * 365), out.next()).await;
    assert!(r.is_err(), "second item must wait: {r:?}");
}

// ---------------------------------------------------------------------------------------------
// rate_limit: "Bursts pass at once up to the limiter's burst, then one item per emission
// interval. The limiter may be shared with other streams or callers: they draw from one
// budget."
// ---------------------------------------------------------------------------------------------

fn limiter(count: u32, period: Duration, burst: u32) -> RateLimiter {
    RateLimiter::builder(count, period)
        .burst(burst)
        .jitter(Duration::ZERO)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn rate_limit_bursts_up_to_the_burst_then_paces_and_does_not_bank_idle_days() {
    let start = Instant::now();
    let day = 86_400_000;
    let mut items: Vec<(u64, u32)> = (0..6).map(|i| (0, i)).collect();
    items.extend((6..12).map(|i| (day, i)));
    let mut out = std::pin::pin!(timed(start, items).rate_limit(limiter(10, ms(1000), 3)));
    let mut times = Vec::new();
    while let Some(i) = out.next().await {
        times.push((i, start.elapsed()));
    }
    let want: Vec<(u32, Duration)> = [0, 0, 0, 100, 200, 300]
        .iter()
        .chain(&[day, day, day, day + 100, day + 200, day + 300])
        .zip(0..)
        .map(|(t, i)| (i, ms(*t)))
        .collect();
    assert_eq!(times, want);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_shared_between_two_streams_draws_from_one_budget() {
    let lim = limiter(10, ms(1000), 2);
    let start = Instant::now();
    let a = stream::iter(0..10u32).rate_limit(lim.clone());
    let b = stream::iter(100..110u32).rate_limit(lim);
    let mut merged = std::pin::pin!(stream::select(a, b));
    let mut times = Vec::new();
    while let Some(_i) = merged.next().await {
        times.push(start.elapsed());
    }
    assert_eq!(times.len(), 20);
    // Two at once (the burst), then one per 100 ms for both streams together.
    for (k, t) in times.iter().enumerate().skip(2) {
        let earliest = ms(100 * (u64::try_from(k).unwrap() - 1));
        assert!(*t >= earliest, "item {k} at {t:?}, before {earliest:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limit_next_dropped_while_waiting_loses_nothing_and_spends_no_extra_permit() {
    let start = Instant::now();
    let mut out = std::pin::pin!(stream::iter(0..20u32).rate_limit(limiter(10, ms(1000), 1)));
    let mut rng = SplitMix64::new(111);
    let mut got = Vec::new();
    let mut times = Vec::new();
    loop {
        match tokio::time::timeout(ms(rng.below_or_equal(60)), out.next()).await {
            Ok(Some(v)) => {
                got.push(v);
                times.push(start.elapsed());
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    for (k, t) in times.iter().enumerate() {
        let earliest = ms(100 * u64::try_from(k).unwrap());
        assert!(*t >= earliest, "item {k} at {t:?}, before {earliest:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// timeout_each: "Yields Err(Elapsed) once whenever the upstream takes longer than timeout ...
// The consumer's own time with an item is never counted." "Cancel safety: dropping a next()
// future loses nothing; the timer of the item being waited for keeps running for the next
// poll." "The upstream is polled before the timer, so an item that is ready when the timer
// fires is delivered."
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn timeout_each_never_blames_a_slow_consumer() {
    let mut rng = SplitMix64::new(11);
    let src = stream::iter(0..50u32).then(|i| async move {
        tokio::time::sleep(ms(u64::from(i % 5) * 9)).await;
        i
    });
    let mut out = std::pin::pin!(src.timeout_each(ms(40)).unwrap());
    let mut got = Vec::new();
    while let Some(r) = out.next().await {
        got.push(r.expect("the upstream is always within 36 ms"));
        tokio::time::sleep(ms(rng.below_or_equal(10_000))).await;
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn timeout_each_yields_one_elapsed_per_slow_item_however_slow() {
    let src = stream::iter([10u64, 500, 20, 10_000_000]).then(|d| async move {
        tokio::time::sleep(ms(d)).await;
        d
    });
    let got: Vec<_> = src
        .timeout_each(ms(50))
        .unwrap()
        .map(|r| r.ok())
        .collect()
        .await;
    assert_eq!(
        got,
        [Some(10), None, Some(500), Some(20), None, Some(10_000_000)]
    );
}

#[tokio::test(start_paused = true)]
async fn timeout_each_delivers_an_item_ready_exactly_when_the_timer_fires() {
    let src = stream::iter([50u64, 50]).then(|d| async move {
        tokio::time::sleep(ms(d)).await;
        d
    });
    let got: Vec<_> = src.timeout_each(ms(50)).unwrap().collect().await;
    assert_eq!(got, [Ok(50), Ok(50)]);
}

#[tokio::test(start_paused = true)]
async fn timeout_each_dropped_next_futures_keep_the_timer_and_lose_no_item() {
    let start = Instant::now();
    let src = timed(start, vec![(80, 1u32), (400, 2)]);
    let mut out = std::pin::pin!(src.timeout_each(ms(50)).unwrap());
    // Asked at 0, dropped at 30: the timer keeps running from 0.
    assert!(tokio::time::timeout(ms(30), out.next()).await.is_err());
    // A consumer busy for a while between the drop and the next poll.
    let r = out.next().await;
    assert_eq!(r, Some(Err(tidewall::time::Elapsed)));
    assert_eq!(
        start.elapsed(),
        ms(50),
        "the timer restarted after the drop"
    );
    assert_eq!(out.next().await, Some(Ok(1)));
    // Random drops while waiting for the second item: it still comes, once, after one Elapsed.
    let mut rng = SplitMix64::new(9);
    let mut seen = Vec::new();
    while seen.last() != Some(&Ok(2)) {
        if let Ok(r) = tokio::time::timeout(ms(rng.between(1, 30)), out.next()).await {
            seen.push(r.unwrap());
        }
    }
    assert_eq!(seen, [Err(tidewall::time::Elapsed), Ok(2)]);
    assert_eq!(out.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn timeout_each_upstream_that_ends_late_yields_one_elapsed_then_none() {
    let src = stream::once(tokio::time::sleep(ms(500))).filter_map(|()| async { None::<u32> });
    let got: Vec<_> = src.timeout_each(ms(50)).unwrap().collect().await;
    assert_eq!(got, [Err(tidewall::time::Elapsed)]);
    let got: Vec<_> = stream::iter(Vec::<u32>::new())
        .timeout_each(ms(50))
        .unwrap()
        .collect()
        .await;
    assert!(got.is_empty());
}

#[tokio::test(start_paused = true)]
async fn timeout_each_refuses_duration_max_and_a_year_long_timeout_never_fires_early() {
    // "[`ConfigError::DurationOverflow`] for one beyond `u64` nanoseconds".
    assert!(matches!(
        stream::iter([1u32]).timeout_each(Duration::MAX),
        Err(ConfigError::DurationOverflow { field: "timeout" })
    ));
    let src = stream::iter([1u32]).then(|v| async move {
        tokio::time::sleep(Duration::from_secs(86_400 * 365)).await;
        v
    });
    let got: Vec<_> = src
        .timeout_each(Duration::from_secs(86_400 * 366))
        .unwrap()
        .collect()
        .await;
    assert_eq!(got, [Ok(1)]);
}

// ---------------------------------------------------------------------------------------------
// prioritized: "whenever both have an item ready, self's goes first" / "after n high items in a
// row, a ready low item goes next. The merge ends when both streams have ended."
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn prioritized_is_biased_and_ends_only_when_both_end() {
    let got: Vec<u32> = stream::iter(0..10u32)
        .prioritized(stream::iter(100..103u32))
        .collect()
        .await;
    assert_eq!(
        got,
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 100, 101, 102],
        "high first while ready, then the rest of low"
    );
    let got: Vec<u32> = stream::iter(0..0u32)
        .prioritized(stream::iter(100..103u32))
        .collect()
        .await;
    assert_eq!(got, [100, 101, 102]);
}

#[tokio::test(start_paused = true)]
async fn prioritized_low_at_least_every_n_gives_low_a_turn_after_exactly_n_high() {
    for n in [1u32, 2, 3, 7] {
        let got: Vec<u32> = stream::iter(0..30u32)
            .prioritized(stream::iter(1000..1004u32))
            .low_at_least_every(n)
            .unwrap()
            .collect()
            .await;
        let mut want = Vec::new();
        let mut high = 0..30u32;
        let mut low = 1000..1004u32;
        loop {
            let hs: Vec<u32> = high.by_ref().take(usize::try_from(n).unwrap()).collect();
            let done = hs.is_empty();
            want.extend(hs);
            match low.next() {
                Some(l) => want.push(l),
                None if done => break,
                None => {}
            }
        }
        assert_eq!(got, want, "n = {n}");
    }
}

#[tokio::test(start_paused = true)]
async fn prioritized_wakes_for_either_side_and_prefers_high_when_both_are_ready() {
    let (htx, hrx) = futures_channel::mpsc::unbounded::<u32>();
    let (ltx, lrx) = futures_channel::mpsc::unbounded::<u32>();
    let merged = hrx.prioritized(lrx);
    let feeder = tokio::spawn(async move {
        tokio::time::sleep(ms(10)).await;
        ltx.unbounded_send(100).unwrap();
        tokio::time::sleep(ms(10)).await;
        htx.unbounded_send(1).unwrap();
        tokio::time::sleep(ms(10)).await;
        // Both ready at once: high first.
        ltx.unbounded_send(101).unwrap();
        htx.unbounded_send(2).unwrap();
        tokio::time::sleep(ms(10)).await;
        drop(htx);
        tokio::time::sleep(ms(10)).await;
        ltx.unbounded_send(102).unwrap();
    });
    let start = Instant::now();
    let mut merged = std::pin::pin!(merged);
    let mut got = Vec::new();
    while let Some(v) = merged.next().await {
        got.push(v);
        if v == 1 {
            // Let both sides fill before asking again.
            tokio::time::sleep(ms(15)).await;
        }
    }
    feeder.await.unwrap();
    assert_eq!(got, [100, 1, 2, 101, 102]);
    assert_eq!(start.elapsed(), ms(50));
}

#[tokio::test(start_paused = true)]
async fn prioritized_low_that_becomes_ready_after_a_long_high_run_goes_next() {
    // "after n high items in a row, a ready low item is delivered before the next high one":
    // low was not ready during a run of 10 high items; once it is, it must go next.
    let (ltx, lrx) = futures_channel::mpsc::unbounded::<u32>();
    let mut m = std::pin::pin!(
        stream::iter(0..1000u32)
            .prioritized(lrx)
            .low_at_least_every(3)
            .unwrap()
    );
    for want in 0..10u32 {
        assert_eq!(m.next().await, Some(want));
    }
    ltx.unbounded_send(5000).unwrap();
    assert_eq!(m.next().await, Some(5000));
    assert_eq!(m.next().await, Some(10));
}

#[tokio::test(start_paused = true)]
async fn prioritized_with_one_side_ended_and_the_other_pending_does_not_end() {
    let mut m = std::pin::pin!(
        stream::iter(0..2u32)
            .prioritized(stream::pending::<u32>())
            .low_at_least_every(1)
            .unwrap()
    );
    assert_eq!(m.next().await, Some(0));
    assert_eq!(m.next().await, Some(1));
    assert!(m.as_mut().poll_next(&mut cx()).is_pending());
}

// ---------------------------------------------------------------------------------------------
// KeyedMerge: "polling only the streams that woke" / "ready streams are served round-robin (a
// stream that yielded goes to the back of the queue)" / "A stream that ends is removed and
// reported with Keyed::Ended. When no stream is left, the merge yields None (insert more and
// poll again to continue)."
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn keyed_merge_serves_ready_streams_round_robin_and_reports_each_end_once() {
    let mut merge = KeyedMerge::new();
    let sizes = [20u32, 5, 12];
    for (k, n) in sizes.iter().enumerate() {
        merge.insert(k, stream::iter(0..*n));
    }
    let got: Vec<Keyed<usize, u32>> = (&mut merge).collect().await;
    let mut next_of: BTreeMap<usize, u32> = BTreeMap::new();
    let mut ended = BTreeMap::new();
    let mut counts = [0i64; 3];
    for ev in &got {
        match ev {
            Keyed::Item(k, v) => {
                assert!(!ended.contains_key(k), "item after end");
                let want = next_of.entry(*k).or_insert(0);
                assert_eq!(v, want, "stream {k} reordered");
                *want += 1;
                counts[*k] += 1;
                // Round robin among the streams that still have items.
                let live: Vec<i64> = (0..3)
                    .filter(|j| counts[*j] < i64::from(sizes[*j]))
                    .map(|j| counts[j])
                    .collect();
                if let (Some(lo), Some(hi)) = (live.iter().min(), live.iter().max()) {
                    assert!(hi - lo <= 1, "unfair: {counts:?}");
                }
            }
            Keyed::Ended(k) => {
                assert_eq!(ended.insert(*k, ()), None, "ended twice");
                assert_eq!(next_of.get(k).copied().unwrap_or(0), sizes[*k]);
            }
        }
    }
    assert_eq!(ended.len(), 3);
    assert!(merge.is_empty());
    assert!(merge.next().await.is_none());
    merge.insert(9, stream::iter(0..1));
    assert_eq!(merge.next().await, Some(Keyed::Item(9, 0)));
    assert_eq!(merge.next().await, Some(Keyed::Ended(9)));
    assert_eq!(merge.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn keyed_merge_wakes_for_streams_fed_later_and_reports_empty_streams_ended() {
    let mut merge = KeyedMerge::new();
    let mut senders = Vec::new();
    for k in 0..3u32 {
        let (tx, rx) = futures_channel::mpsc::unbounded::<u32>();
        senders.push(tx);
        merge.insert(k, rx.boxed());
    }
    merge.insert(99, stream::iter(Vec::<u32>::new()).boxed());
    let feeder = tokio::spawn(async move {
        let mut rng = SplitMix64::new(91);
        for i in 0..300u32 {
            tokio::time::sleep(ms(rng.below_or_equal(3))).await;
            let k = to_usize(rng.below_or_equal(2));
            senders[k].unbounded_send(i).unwrap();
        }
    });
    let mut per_key: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut ended = Vec::new();
    while let Some(ev) = merge.next().await {
        match ev {
            Keyed::Item(k, v) => per_key.entry(k).or_default().push(v),
            Keyed::Ended(k) => ended.push(k),
        }
    }
    feeder.await.unwrap();
    ended.sort_unstable();
    assert_eq!(ended, [0, 1, 2, 99]);
    let mut all: Vec<u32> = Vec::new();
    for v in per_key.values() {
        assert!(v.windows(2).all(|w| w[0] < w[1]), "a key's items reordered");
        all.extend(v);
    }
    all.sort_unstable();
    assert_eq!(all, (0..300).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn keyed_merge_does_not_starve_a_ready_stream_behind_a_self_waking_one() {
    let mut merge = KeyedMerge::new();
    let polls = Arc::new(AtomicUsize::new(0));
    let p = Arc::clone(&polls);
    merge.insert(
        0u32,
        stream::poll_fn(move |cx| {
            let n = p.fetch_add(1, SeqCst);
            assert!(n < 1_000_000, "monopolized by a busy stream");
            cx.waker().wake_by_ref();
            Poll::<Option<u32>>::Pending
        })
        .boxed(),
    );
    merge.insert(1, stream::iter(0..50u32).boxed());
    let mut got = Vec::new();
    loop {
        match merge.next().await.unwrap() {
            Keyed::Item(1, v) => got.push(v),
            Keyed::Ended(1) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn keyed_merge_dropped_with_registered_wakers_then_woken_is_harmless() {
    let mut merge = KeyedMerge::new();
    let mut senders = Vec::new();
    for k in 0..8u32 {
        let (tx, rx) = futures_channel::mpsc::unbounded::<u32>();
        senders.push(tx);
        merge.insert(k, rx);
    }
    assert!(Pin::new(&mut merge).poll_next(&mut cx()).is_pending());
    senders[3].unbounded_send(1).unwrap();
    assert_eq!(
        Pin::new(&mut merge).poll_next(&mut cx()),
        Poll::Ready(Some(Keyed::Item(3, 1)))
    );
    assert!(Pin::new(&mut merge).poll_next(&mut cx()).is_pending());
    drop(merge);
    for tx in &senders {
        assert!(tx.unbounded_send(2).is_err(), "the receiver was dropped");
    }
}

#[tokio::test(start_paused = true)]
async fn keyed_merge_does_not_poll_idle_streams_again() {
    let idle_polls = Arc::new(AtomicUsize::new(0));
    let mut merge = KeyedMerge::new();
    let n_idle = 2000;
    for k in 0..n_idle {
        let polls = Arc::clone(&idle_polls);
        let s: Pin<Box<dyn Stream<Item = u32> + Send>> = Box::pin(stream::poll_fn(move |_cx| {
            polls.fetch_add(1, SeqCst);
            Poll::Pending
        }));
        merge.insert(k, s);
    }
    merge.insert(
        usize::MAX,
        Box::pin(stream::iter(0..5000u32).then(|i| async move {
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
            i
        })),
    );
    let mut items = 0;
    loop {
        match merge.next().await.unwrap() {
            Keyed::Item(k, _) => {
                assert_eq!(k, usize::MAX);
                items += 1;
            }
            Keyed::Ended(k) => {
                assert_eq!(k, usize::MAX);
                break;
            }
        }
    }
    assert_eq!(items, 5000);
    let polls = idle_polls.load(SeqCst);
    assert!(polls <= n_idle, "{polls} polls of {n_idle} idle streams");
    assert_eq!(merge.len(), n_idle);
}

#[tokio::test(start_paused = true)]
async fn keyed_merge_with_self_waking_pending_streams_returns_from_poll() {
    let mut merge = KeyedMerge::new();
    for k in 0..4u32 {
        let polls = Arc::new(AtomicUsize::new(0));
        let s = stream::poll_fn(move |cx| {
            let n = polls.fetch_add(1, SeqCst);
            assert!(n < 1_000_000, "monopolized by a busy stream");
            cx.waker().wake_by_ref();
            Poll::<Option<u32>>::Pending
        });
        merge.insert(k, s);
    }
    assert!(Pin::new(&mut merge).poll_next(&mut cx()).is_pending());
}

// ---------------------------------------------------------------------------------------------
// LineReader: "A line is the bytes before \n (a trailing \r is kept); a last line without \n
// is delivered at end of input." "Memory is the buffer ... at most max(buffer, max_line + 1)
// bytes" "A batch is never empty" "TooLong: the complete lines before it are delivered first,
// then this and every later call fails".
// ---------------------------------------------------------------------------------------------

/// A reader over a byte source that returns seeded short reads, `Pending` now and then, and
/// (optionally) one error at a given offset.
struct Hostile<G> {
    next_byte: G,
    left: u64,
    rng: SplitMix64,
    max_read: u64,
    pending_one_in: u64,
    fail_at: Option<u64>,
    pos: u64,
    read_calls: usize,
}

impl<G: FnMut() -> u8> Hostile<G> {
    fn new(next_byte: G, len: u64, seed: u64, max_read: u64) -> Self {
        Self {
            next_byte,
            left: len,
            rng: SplitMix64::new(seed),
            max_read,
            pending_one_in: 0,
            fail_at: None,
            pos: 0,
            read_calls: 0,
        }
    }
}

impl<G: FnMut() -> u8 + Unpin> AsyncRead for Hostile<G> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.read_calls += 1;
        if this.pending_one_in > 0 && this.rng.below_or_equal(this.pending_one_in - 1) == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if this.fail_at.is_some_and(|at| this.pos >= at) {
            this.fail_at = None;
            return Poll::Ready(Err(io::Error::other("injected")));
        }
        let cap = u64::try_from(buf.len()).unwrap();
        let mut n = this.rng.between(1, this.max_read).min(cap).min(this.left);
        if let Some(at) = this.fail_at {
            n = n.min(at - this.pos).max(1).min(this.left);
        }
        let n = to_usize(n);
        for b in &mut buf[..n] {
            *b = (this.next_byte)();
        }
        let n64 = u64::try_from(n).unwrap();
        this.left -= n64;
        this.pos += n64;
        Poll::Ready(Ok(n))
    }
}

fn bytes_of(data: Vec<u8>) -> (impl FnMut() -> u8 + Unpin, u64) {
    let len = u64::try_from(data.len()).unwrap();
    let mut it = data.into_iter();
    (move || it.next().unwrap_or(0), len)
}

async fn all_lines<Rd: futures_util::io::AsyncRead + Unpin>(
    r: &mut LineReader<Rd>,
) -> Result<Vec<Vec<u8>>, LinesError> {
    let mut out = Vec::new();
    let mut previous_ended_in_newline = true;
    while let Some(batch) = r.next_batch().await? {
        assert!(
            previous_ended_in_newline,
            "a batch without its final newline was not the last"
        );
        assert!(batch.lines().next().is_some(), "empty batch");
        let raw = batch.as_bytes();
        previous_ended_in_newline = raw.ends_with(b"\n");
        let joined = batch.lines().collect::<Vec<_>>().join(&b'\n');
        assert_eq!(
            joined,
            raw.strip_suffix(b"\n").unwrap_or(raw),
            "as_bytes and lines disagree"
        );
        out.extend(batch.lines().map(<[u8]>::to_vec));
    }
    Ok(out)
}

fn reference_lines(data: &[u8]) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = data.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    if data.is_empty() || data.ends_with(b"\n") {
        lines.pop();
    }
    lines
}

#[tokio::test]
async fn line_reader_handles_crlf_empty_input_empty_lines_and_a_last_line_without_newline() {
    let cases: [&[u8]; 7] = [
        b"",
        b"\n",
        b"\n\n\n",
        b"a\r\nb\r\n",
        b"no newline",
        b"x\n\r",
        b"\r\n\r",
    ];
    for data in cases {
        let mut r = LineReader::new(data, 4, 16, Overlong::Error).unwrap();
        let got = all_lines(&mut r).await.unwrap();
        assert_eq!(got, reference_lines(data), "{data:?}");
        assert!(r.next_batch().await.unwrap().is_none(), "None is final");
    }
}

#[tokio::test]
async fn line_reader_accepts_a_line_of_exactly_max_line_and_refuses_one_byte_more() {
    for buffer in [1usize, 9, 10, 11, 64] {
        let exact = [b"ab\n".as_slice(), &[b'x'; 10], b"\n"].concat();
        let mut r = LineReader::new(exact.as_slice(), buffer, 10, Overlong::Error).unwrap();
        assert_eq!(
            all_lines(&mut r).await.unwrap(),
            [b"ab".to_vec(), vec![b'x'; 10]]
        );
        // A last line without newline of exactly max_line.
        let exact_eof = [b"ab\n".as_slice(), &[b'y'; 10]].concat();
        let mut r = LineReader::new(exact_eof.as_slice(), buffer, 10, Overlong::Error).unwrap();
        assert_eq!(
            all_lines(&mut r).await.unwrap(),
            [b"ab".to_vec(), vec![b'y'; 10]]
        );
        // One byte over: the lines before it come first, then TooLong, sticky.
        for over in [
            [b"ab\ncd\n".as_slice(), &[b'z'; 11], b"\nok\n"].concat(),
            [b"ab\ncd\n".as_slice(), &[b'z'; 11]].concat(),
        ] {
            let mut r = LineReader::new(over.as_slice(), buffer, 10, Overlong::Error).unwrap();
            let mut before = Vec::new();
            let err = loop {
                match r.next_batch().await {
                    Ok(Some(b)) => before.extend(b.lines().map(<[u8]>::to_vec)),
                    Ok(None) => panic!("buffer {buffer}: overlong line accepted: {before:?}"),
                    Err(e) => break e,
                }
            };
            assert_eq!(before, [b"ab".to_vec(), b"cd".to_vec()], "buffer {buffer}");
            assert!(
                matches!(err, LinesError::TooLong { max: 10, .. }),
                "{err:?}"
            );
            for _ in 0..3 {
                assert!(matches!(
                    r.next_batch().await,
                    Err(LinesError::TooLong { .. })
                ));
            }
        }
    }
}

#[tokio::test]
async fn line_reader_counts_a_kept_carriage_return_in_the_line_length() {
    // "A line is the bytes before \n (a trailing \r is kept)": ten bytes and a \r are 11.
    let data = [&[b'x'; 10][..], b"\r\n"].concat();
    let mut r = LineReader::new(data.as_slice(), 64, 11, Overlong::Error).unwrap();
    let mut want = vec![b'x'; 10];
    want.push(b'\r');
    assert_eq!(all_lines(&mut r).await.unwrap(), [want]);
    let mut r = LineReader::new(data.as_slice(), 64, 10, Overlong::Error).unwrap();
    assert!(matches!(
        r.next_batch().await,
        Err(LinesError::TooLong { max: 10, .. })
    ));
}

#[tokio::test]
async fn line_reader_skip_drops_overlong_lines_counts_them_and_never_yields_empty_batches() {
    let mut data = Vec::new();
    let mut want = Vec::new();
    let mut rng = SplitMix64::new(21);
    let mut skipped = 0;
    for _ in 0..500 {
        let len = to_usize(rng.below_or_equal(40));
        let line: Vec<u8> = (0..len)
            .map(|i| b'a' + u8::try_from(i % 26).unwrap())
            .collect();
        if len > 16 {
            skipped += 1;
        } else {
            want.push(line.clone());
        }
        data.extend(line);
        data.push(b'\n');
    }
    for max_read in [1u64, 3, 17, 100_000] {
        let (src, len) = bytes_of(data.clone());
        let reader = Hostile::new(src, len, max_read, max_read);
        let mut r = LineReader::new(reader, 8, 16, Overlong::Skip).unwrap();
        assert_eq!(
            all_lines(&mut r).await.unwrap(),
            want,
            "max_read {max_read}"
        );
        assert_eq!(r.skipped(), skipped);
    }
    // Only overlong lines: no batch at all, end of input.
    let data = [&[b'q'; 100][..], b"\n", &[b'r'; 50], b"\n", &[b's'; 40]].concat();
    let mut r = LineReader::new(data.as_slice(), 8, 16, Overlong::Skip).unwrap();
    assert!(r.next_batch().await.unwrap().is_none());
    assert_eq!(r.skipped(), 3);
}

#[tokio::test]
async fn line_reader_over_one_byte_reads_and_random_reads_matches_a_plain_split() {
    let mut rng = SplitMix64::new(31);
    let data: Vec<u8> = (0..20_000)
        .map(|_| match rng.below_or_equal(9) {
            0 => b'\n',
            1 => b'\r',
            _ => b'a' + u8::try_from(rng.below_or_equal(25)).unwrap(),
        })
        .collect();
    let want = reference_lines(&data);
    for (seed, max_read) in [(1u64, 1u64), (2, 2), (3, 64), (4, 5000)] {
        let (src, len) = bytes_of(data.clone());
        let mut reader = Hostile::new(src, len, seed, max_read);
        reader.pending_one_in = 3;
        let mut r = LineReader::new(reader, 32, 200, Overlong::Error).unwrap();
        assert_eq!(
            all_lines(&mut r).await.unwrap(),
            want,
            "max_read {max_read}"
        );
    }
}

#[tokio::test]
async fn line_reader_keeps_the_partial_line_across_a_reader_error_and_continues() {
    // A reader error in the middle of a line: the error is returned; the next call goes on
    // reading, and the line is whole (nothing lost, nothing duplicated).
    let data = b"first\nsecond line that breaks\nthird\n".to_vec();
    for at in [3u64, 6, 10, 20, 30, 35] {
        let (src, len) = bytes_of(data.clone());
        let mut reader = Hostile::new(src, len, at, 4);
        reader.fail_at = Some(at);
        let mut r = LineReader::new(reader, 8, 64, Overlong::Error).unwrap();
        let mut got = Vec::new();
        let mut errors = 0;
        loop {
            match r.next_batch().await {
                Ok(Some(b)) => got.extend(b.lines().map(<[u8]>::to_vec)),
                Ok(None) => break,
                Err(LinesError::Io(_)) => errors += 1,
                Err(e) => panic!("at {at}: {e:?}"),
            }
            assert!(errors <= 1);
        }
        assert_eq!(errors, 1, "at {at}");
        assert_eq!(got, reference_lines(&data), "at {at}");
    }
}

#[tokio::test]
async fn line_reader_next_batch_dropped_at_random_polls_loses_and_duplicates_nothing() {
    let mut rng = SplitMix64::new(41);
    let mut data = Vec::new();
    for i in 0..3000u32 {
        data.extend(
            format!(
                "line {i} {}\n",
                "x".repeat(to_usize(rng.below_or_equal(30)))
            )
            .bytes(),
        );
    }
    let want = reference_lines(&data);
    for seed in 0..4u64 {
        let (src, len) = bytes_of(data.clone());
        let mut reader = Hostile::new(src, len, seed, 50);
        reader.pending_one_in = 2;
        let mut r = LineReader::new(reader, 64, 64, Overlong::Error).unwrap();
        let mut rng = SplitMix64::new(seed + 100);
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut done = false;
        while !done {
            let polls = rng.below_or_equal(3);
            let mut fut = std::pin::pin!(r.next_batch());
            let mut k = 0;
            loop {
                if k == polls {
                    break; // dropped mid-way
                }
                k += 1;
                match fut.as_mut().poll(&mut cx()) {
                    Poll::Pending => {}
                    Poll::Ready(Ok(Some(b))) => {
                        got.extend(b.lines().map(<[u8]>::to_vec));
                        break;
                    }
                    Poll::Ready(Ok(None)) => {
                        done = true;
                        break;
                    }
                    Poll::Ready(Err(e)) => panic!("{e:?}"),
                }
            }
        }
        assert_eq!(got.len(), want.len(), "seed {seed}");
        assert_eq!(got, want, "seed {seed}");
    }
}

#[tokio::test]
async fn line_reader_streams_64_mib_within_its_documented_buffer_bound() {
    let buffer = 4096;
    let max_line = 1000;
    let mut gen_rng = SplitMix64::new(51);
    let mut left_in_line = 0u64;
    let total: u64 = 64 << 20;
    let mut made = 0u64;
    let src = move || {
        made += 1;
        if made == total {
            return b'\n';
        }
        if left_in_line == 0 {
            left_in_line = gen_rng.below_or_equal(1000) + 1;
        }
        left_in_line -= 1;
        if left_in_line == 0 { b'\n' } else { b'k' }
    };
    let reader = Hostile::new(src, total, 5, 1 << 20);
    let mut r = LineReader::new(reader, buffer, max_line, Overlong::Error).unwrap();
    let mut bytes = 0u64;
    let mut biggest = 0usize;
    while let Some(b) = r.next_batch().await.unwrap() {
        biggest = biggest.max(b.as_bytes().len());
        bytes += u64::try_from(b.as_bytes().len()).unwrap();
        for line in b.lines() {
            assert!(line.len() <= max_line);
        }
    }
    assert_eq!(bytes, total, "every byte delivered once");
    assert!(
        biggest <= buffer.max(max_line + 1),
        "a batch of {biggest} bytes from a buffer of {buffer}"
    );
}

#[tokio::test]
async fn line_reader_skip_survives_a_64_mib_line_and_resumes_after_it() {
    let total: u64 = (64 << 20) + 3;
    let mut i = 0u64;
    let src = move || {
        i += 1;
        match total - i {
            0 | 3 => b'\n',
            1 | 2 => b'k',
            _ => b'x',
        }
    };
    // Bytes: "xxx…x\nkk\n"
    let reader = Hostile::new(src, total, 6, 1 << 16);
    let mut r = LineReader::new(reader, 4096, 1024, Overlong::Skip).unwrap();
    assert_eq!(all_lines(&mut r).await.unwrap(), [b"kk".to_vec()]);
    assert_eq!(r.skipped(), 1);
}

#[tokio::test]
async fn line_reader_error_mode_stops_a_64_mib_line_early() {
    let total: u64 = 64 << 20;
    let reader = Hostile::new(|| b'x', total, 7, 1 << 16);
    let mut r = LineReader::new(reader, 4096, 1024, Overlong::Error).unwrap();
    assert!(matches!(
        r.next_batch().await,
        Err(LinesError::TooLong { max: 1024, .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// BlockingReader: "a failed read is returned once; reading again retries. A read that panicked
// loses the reader: that read and every later one fail."
// ---------------------------------------------------------------------------------------------

struct FlakyFile {
    data: io::Cursor<Vec<u8>>,
    reads: usize,
    fail_on: Vec<usize>,
    interrupt_on: Vec<usize>,
    panic_on: Option<usize>,
}

impl io::Read for FlakyFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.panic_on == Some(self.reads) {
            panic!("read {} panics", self.reads);
        }
        if self.fail_on.contains(&self.reads) {
            return Err(io::Error::other("flaky"));
        }
        if self.interrupt_on.contains(&self.reads) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(3);
        self.data.read(&mut buf[..n])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reader_returns_a_failed_read_once_then_retries_without_losing_bytes() {
    let data: Vec<u8> = (0..200u8).collect();
    let file = FlakyFile {
        data: io::Cursor::new(data.clone()),
        reads: 0,
        fail_on: vec![2, 5, 6, 30],
        interrupt_on: Vec::new(),
        panic_on: None,
    };
    let mut reader = BlockingReader::new(Tokio, file, 7).unwrap();
    let mut got = Vec::new();
    let mut errors = 0;
    let mut buf = [0u8; 5];
    loop {
        match futures_util::io::AsyncReadExt::read(&mut reader, &mut buf).await {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => errors += 1,
        }
        assert!(errors <= 4);
    }
    assert_eq!(errors, 4);
    assert_eq!(got, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reader_after_a_panicking_read_fails_every_later_read() {
    let file = FlakyFile {
        data: io::Cursor::new(vec![b'a'; 100]),
        reads: 0,
        fail_on: Vec::new(),
        interrupt_on: Vec::new(),
        panic_on: Some(3),
    };
    let mut reader = BlockingReader::new(Tokio, file, 4).unwrap();
    let mut buf = [0u8; 16];
    let mut ok = 0;
    let mut first_err = None;
    for i in 0..10 {
        match futures_util::io::AsyncReadExt::read(&mut reader, &mut buf).await {
            Ok(n) => {
                assert!(first_err.is_none(), "read {i} succeeded after the panic");
                assert!(n > 0);
                ok += n;
            }
            Err(_) => {
                first_err.get_or_insert(i);
            }
        }
    }
    assert_eq!(ok, 6, "two good reads of 3 bytes before the panic");
    assert!(first_err.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reader_into_line_reader_with_a_one_byte_chunk() {
    let text = b"alpha\r\nbeta\n\ngamma".to_vec();
    let reader = BlockingReader::new(Tokio, io::Cursor::new(text.clone()), 1).unwrap();
    let mut r = LineReader::new(reader, 2, 8, Overlong::Error).unwrap();
    assert_eq!(all_lines(&mut r).await.unwrap(), reference_lines(&text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reader_retries_interrupted_reads_without_reporting_them() {
    let data: Vec<u8> = (0..100u8).collect();
    let file = FlakyFile {
        data: io::Cursor::new(data.clone()),
        reads: 0,
        fail_on: Vec::new(),
        interrupt_on: vec![1, 2, 4, 9, 10, 11],
        panic_on: None,
    };
    let reader = BlockingReader::new(Tokio, file, 16).unwrap();
    let mut got = Vec::new();
    futures_util::io::AsyncReadExt::read_to_end(&mut { reader }, &mut got)
        .await
        .expect("Interrupted is retried, not reported");
    assert_eq!(got, data);
}

/// A file whose reads block until released, and which says when it is dropped.
struct Gated {
    release: std::sync::mpsc::Receiver<()>,
    dropped: std::sync::mpsc::Sender<()>,
}

impl io::Read for Gated {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let _ = self.release.recv();
        buf[0] = b'g';
        Ok(1)
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        let _ = self.dropped.send(());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reader_dropped_during_a_read_detaches_it_and_the_file_is_dropped_after() {
    let (release_tx, release_rx) = std::sync::mpsc::channel();
    let (dropped_tx, dropped_rx) = std::sync::mpsc::channel();
    let file = Gated {
        release: release_rx,
        dropped: dropped_tx,
    };
    let mut reader = BlockingReader::new(Tokio, file, 8).unwrap();
    let mut buf = [0u8; 8];
    let mut read = futures_util::io::AsyncReadExt::read(&mut reader, &mut buf);
    assert!(
        read.poll_unpin(&mut cx()).is_pending(),
        "the read is blocked"
    );
    drop(read);
    // Dropping the reader must not wait for the blocked read.
    drop(reader);
    assert!(
        dropped_rx.try_recv().is_err(),
        "dropped while its read still runs?"
    );
    release_tx.send(()).unwrap();
    // A second read, if the detached reader makes one; it may already have dropped the file
    // (and the receiver with it), which is what this test waits for.
    let _ = release_tx.send(());
    drop(release_tx);
    let dropped = tokio::task::spawn_blocking(move || dropped_rx.recv())
        .await
        .unwrap();
    assert!(
        dropped.is_ok(),
        "the detached read never finished and dropped the file"
    );
}

// ---------------------------------------------------------------------------------------------
// generator: "at most `capacity` items wait between the two"; "The producer runs inside this
// stream's poll_next (no task is spawned)"; yield_ "Returns false once the consumer has dropped
// the stream"; "Cancel safety: dropping the future drops item unsent."
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn generator_never_runs_more_than_capacity_ahead_of_the_consumer() {
    for cap in [1usize, 2, 5, 64] {
        let handed = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&handed);
        let mut g = std::pin::pin!(
            generator(cap, move |mut y| async move {
                for i in 0..500u32 {
                    if !y.yield_(i).await {
                        return;
                    }
                    h.fetch_add(1, SeqCst);
                }
            })
            .unwrap()
        );
        let mut got = 0u32;
        while let Some(i) = g.next().await {
            assert_eq!(i, got);
            got += 1;
            let ahead = handed.load(SeqCst) - to_usize(u64::from(got));
            assert!(ahead <= cap, "cap {cap}: {ahead} items ahead");
        }
        assert_eq!(got, 500);
    }
}

#[tokio::test(start_paused = true)]
async fn generator_yielder_moved_into_a_spawned_task_still_respects_capacity() {
    let handed = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&handed);
    let mut g = std::pin::pin!(
        generator(2, move |mut y| async move {
            let task = tokio::spawn(async move {
                for i in 0..100u32 {
                    if !y.yield_(i).await {
                        return;
                    }
                    h.fetch_add(1, SeqCst);
                }
            });
            let _ = task.await;
        })
        .unwrap()
    );
    assert_eq!(g.next().await, Some(0));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let ahead = handed.load(SeqCst) - 1;
    assert!(ahead <= 2, "{ahead} items waiting with capacity 2");
    let rest: Vec<u32> = g.collect().await;
    assert_eq!(rest, (1..100).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn generator_next_dropped_at_random_polls_loses_no_value() {
    for seed in 0..5u64 {
        let mut g = std::pin::pin!(
            generator(3, move |mut y| async move {
                let mut rng = SplitMix64::new(seed);
                for i in 0..400u32 {
                    // A producer that is itself pending now and then.
                    if rng.below_or_equal(2) == 0 {
                        tokio::task::yield_now().await;
                    }
                    if !y.yield_(i).await {
                        return;
                    }
                }
            })
            .unwrap()
        );
        let mut rng = SplitMix64::new(seed + 1000);
        let mut got = Vec::new();
        loop {
            let polls = rng.below_or_equal(2);
            let mut next = g.next();
            let mut r = None;
            for _ in 0..polls {
                if let Poll::Ready(x) = next.poll_unpin(&mut cx()) {
                    r = Some(x);
                    break;
                }
            }
            drop(next);
            match r {
                Some(Some(i)) => got.push(i),
                Some(None) => break,
                None => tokio::task::yield_now().await,
            }
        }
        assert_eq!(got, (0..400).collect::<Vec<_>>(), "seed {seed}");
    }
}

#[tokio::test(start_paused = true)]
async fn generator_yield_future_dropped_unsent_never_reaches_the_consumer() {
    let dropped = Arc::new(Mutex::new(Vec::new()));
    let d = Arc::clone(&dropped);
    let g = generator(1, move |mut y| async move {
        for i in 0..200u32 {
            // Poll the send once; if the buffer is full, drop it and move on.
            let mut send = Box::pin(y.yield_(i));
            let sent = futures_util::future::poll_fn(|cx| match send.as_mut().poll(cx) {
                Poll::Ready(ok) => Poll::Ready(Some(ok)),
                Poll::Pending => Poll::Ready(None),
            })
            .await;
            drop(send);
            match sent {
                Some(true) => {}
                Some(false) => return,
                None => d.lock().unwrap().push(i),
            }
            if i % 3 == 0 {
                tokio::task::yield_now().await;
            }
        }
    })
    .unwrap();
    let got: Vec<u32> = g.collect().await;
    let dropped = dropped.lock().unwrap().clone();
    assert!(!dropped.is_empty(), "capacity 1 must have filled up");
    for i in &dropped {
        assert!(!got.contains(i), "{i} was dropped unsent but arrived");
    }
    assert_eq!(got.len() + dropped.len(), 200);
}

#[tokio::test(start_paused = true)]
async fn generator_smuggled_yielder_returns_false_after_the_stream_is_dropped() {
    let (tx, rx) = futures_channel::oneshot::channel();
    let alive = Arc::new(AtomicBool::new(true));
    let a = Arc::clone(&alive);
    let mut g = Box::pin(
        generator(2, move |mut y| async move {
            assert!(y.yield_(1u32).await);
            let _ = tx.send(y);
            futures_util::future::pending::<()>().await;
            a.store(false, SeqCst);
        })
        .unwrap(),
    );
    assert_eq!(g.next().await, Some(1));
    assert!(g.as_mut().poll_next(&mut cx()).is_pending());
    let mut y = rx.await.unwrap();
    drop(g);
    assert_eq!(y.yield_(2).now_or_never(), Some(false));
    assert!(alive.load(SeqCst), "the producer never ran past pending");
}

// ---------------------------------------------------------------------------------------------
// interval_on: "The first tick is one period after the interval was created"; MissedTicks
// semantics; "Cancel safety: dropping a next() future loses no tick".
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn documented_defaults_are_skip_and_error() {
    // "(the default: no bursts, no drift)" / "Fail with LinesError::TooLong (the default …)".
    assert_eq!(MissedTicks::default(), MissedTicks::Skip);
    assert_eq!(Overlong::default(), Overlong::Error);
}

#[tokio::test(start_paused = true)]
async fn interval_first_polled_late_follows_the_schedule_from_its_creation() {
    let p = ms(100);
    let start = Tokio.now();
    let mut burst = std::pin::pin!(interval_on(&Tokio, p, MissedTicks::Burst).unwrap());
    let mut skip = std::pin::pin!(interval_on(&Tokio, p, MissedTicks::Skip).unwrap());
    tokio::time::sleep(ms(550)).await;
    for k in 1..=5u32 {
        assert_eq!(burst.next().await, Some(start + p * k));
    }
    assert_eq!(Tokio.now(), start + ms(550));
    assert_eq!(
        skip.next().await,
        Some(start + p),
        "the earliest missed point"
    );
    assert_eq!(skip.next().await, Some(start + ms(600)));
    assert_eq!(Tokio.now(), start + ms(600));
    assert_eq!(burst.next().await, Some(start + ms(600)));
}

#[tokio::test(start_paused = true)]
async fn interval_burst_delivers_every_missed_tick_then_keeps_the_schedule() {
    let start = Tokio.now();
    let p = ms(100);
    let mut t = std::pin::pin!(interval_on(&Tokio, p, MissedTicks::Burst).unwrap());
    assert_eq!(t.next().await, Some(start + p));
    tokio::time::sleep(ms(550)).await; // now at 650: ticks 200..=600 are late
    for k in 2..=6u32 {
        assert_eq!(t.next().await, Some(start + p * k));
        assert_eq!(Tokio.now(), start + ms(650), "missed ticks come at once");
    }
    assert_eq!(t.next().await, Some(start + p * 7));
    assert_eq!(Tokio.now(), start + p * 7);
}

#[tokio::test(start_paused = true)]
async fn interval_delay_restarts_the_schedule_from_the_late_tick() {
    let start = Tokio.now();
    let p = ms(100);
    let mut t = std::pin::pin!(interval_on(&Tokio, p, MissedTicks::Delay).unwrap());
    assert_eq!(t.next().await, Some(start + p));
    tokio::time::sleep(ms(350)).await; // now 450
    let late = t.next().await.unwrap();
    assert_eq!(Tokio.now(), start + ms(450));
    assert!(late >= start + ms(200));
    let next = t.next().await.unwrap();
    assert_eq!(
        Tokio.now(),
        start + ms(550),
        "spacing at least one period from the late tick"
    );
    assert!(next >= start + ms(550) - ms(1));
}

#[tokio::test(start_paused = true)]
async fn interval_skip_after_a_stall_of_more_than_2_pow_32_periods_lands_within_one_period() {
    // (tokio's timer has a 1 ms resolution, so the periods are whole milliseconds.)
    for p in [ms(1), ms(7)] {
        let start = Tokio.now();
        let mut t = std::pin::pin!(interval_on(&Tokio, p, MissedTicks::Skip).unwrap());
        assert_eq!(t.next().await, Some(start + p));
        assert_eq!(Tokio.now(), start + p);
        // 400 days: 3.5e10 periods of 1 ms, past a u32 count.
        tokio::time::sleep(Duration::from_secs(400 * 86_400) + ms(3)).await;
        let now = Tokio.now();
        assert_eq!(
            t.next().await,
            Some(start + p * 2),
            "the earliest missed point"
        );
        let next = t.next().await.unwrap();
        assert!(
            next > now && next <= now + p,
            "next {next:?} vs now {now:?}"
        );
        assert_eq!(
            (next - start).as_nanos() % p.as_nanos(),
            0,
            "off the schedule"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn interval_next_dropped_at_random_points_loses_no_tick() {
    let start = Tokio.now();
    let p = ms(10);
    let mut t = std::pin::pin!(interval_on(&Tokio, p, MissedTicks::Burst).unwrap());
    let mut rng = SplitMix64::new(61);
    let mut got = Vec::new();
    while got.len() < 100 {
        let wait = ms(rng.below_or_equal(25));
        if let Ok(tick) = tokio::time::timeout(wait, t.next()).await {
            got.push(tick.unwrap());
        }
    }
    let want: Vec<_> = (1..=100u32).map(|k| start + p * k).collect();
    assert_eq!(got, want);
}

#[tokio::test(start_paused = true)]
async fn interval_jitter_delays_wakeups_but_never_moves_the_schedule() {
    let start = Tokio.now();
    let p = ms(100);
    let mut t = std::pin::pin!(
        interval_on(&Tokio, p, MissedTicks::Skip)
            .unwrap()
            .jitter(ms(30), 7)
            .unwrap()
    );
    for k in 1..=50u32 {
        let tick = t.next().await.unwrap();
        assert_eq!(tick, start + p * k);
        let now = Tokio.now();
        assert!(
            now >= tick && now <= tick + ms(30),
            "tick {k} woke {:?} late",
            now - tick
        );
    }
}

#[tokio::test(start_paused = true)]
async fn interval_burst_with_jitter_larger_than_the_period_still_counts_every_tick() {
    let start = Tokio.now();
    let p = ms(10);
    let mut t = std::pin::pin!(
        interval_on(&Tokio, p, MissedTicks::Burst)
            .unwrap()
            .jitter(ms(35), 3)
            .unwrap()
    );
    for k in 1..=200u32 {
        assert_eq!(t.next().await, Some(start + p * k), "tick {k}");
    }
}

#[tokio::test(start_paused = true)]
async fn interval_with_the_largest_valid_jitter_waits_without_panicking() {
    let made = interval_on(&Tokio, ms(10), MissedTicks::Skip)
        .unwrap()
        .jitter(Duration::from_nanos(u64::MAX), 1);
    let mut t = std::pin::pin!(made.expect("u64::MAX nanoseconds is within u64 nanoseconds"));
    let r = tokio::time::timeout(Duration::from_secs(86_400), t.next()).await;
    // Either the jitter happened to be short, or the tick waits: no panic either way.
    if let Ok(tick) = r {
        assert!(tick.is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn interval_refuses_duration_max_and_a_century_period_waits() {
    // "[`ConfigError::DurationOverflow`] for one beyond `u64` nanoseconds".
    assert!(matches!(
        interval_on(&Tokio, Duration::MAX, MissedTicks::Burst),
        Err(ConfigError::DurationOverflow { field: "period" })
    ));
    let century = Duration::from_secs(100 * 365 * 86_400);
    let mut t = std::pin::pin!(interval_on(&Tokio, century, MissedTicks::Burst).unwrap());
    // "The first tick is one period after the interval was created": a century away.
    let r = tokio::time::timeout(Duration::from_secs(86_400 * 365), t.next()).await;
    assert!(r.is_err(), "a tick came: {r:?}");
}

// ---------------------------------------------------------------------------------------------
// follow_on: appends, partial lines, overlong lines, truncation, a missing file.
// ---------------------------------------------------------------------------------------------

fn append(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn follow_holds_a_partial_line_until_its_newline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "one\ntw").unwrap();
    let mut lines = follow_on(&Tokio, &path, ms(100), 64, true).unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"one");
    assert!(
        tokio::time::timeout(ms(1000), lines.next()).await.is_err(),
        "a partial line was delivered"
    );
    append(&path, b"o\nthree\n");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"two");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"three");
}

#[tokio::test(start_paused = true)]
async fn follow_starts_at_the_end_unless_from_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "old\n").unwrap();
    let mut lines = follow_on(&Tokio, &path, ms(50), 64, false).unwrap();
    assert!(tokio::time::timeout(ms(500), lines.next()).await.is_err());
    append(&path, b"new\n");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"new");
}

#[tokio::test(start_paused = true)]
async fn follow_delivers_an_overlong_line_as_one_invalid_data_error_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    let mut data = b"short\n".to_vec();
    data.extend(vec![b'x'; 3 << 20]); // longer than one check's read
    data.extend(b"\n12345678\n123456789\nafter\n");
    std::fs::write(&path, &data).unwrap();
    let mut lines = follow_on(&Tokio, &path, ms(100), 8, true).unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"short");
    let e = lines.next().await.unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert_eq!(
        lines.next().await.unwrap().unwrap(),
        b"12345678",
        "exactly max_line"
    );
    let e = lines.next().await.unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "max_line + 1");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"after");
}

#[tokio::test(start_paused = true)]
async fn follow_rereads_a_file_truncated_in_place_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "aaaa\nbbbb\n").unwrap();
    let mut lines = follow_on(&Tokio, &path, ms(100), 64, true).unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"aaaa");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"bbbb");
    std::fs::write(&path, "c\n").unwrap(); // truncate in place, shorter
    assert_eq!(lines.next().await.unwrap().unwrap(), b"c");
    // Truncated and rewritten longer than before, with different bytes.
    std::fs::write(&path, "dddddddddd\neeeeeeeeee\n").unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"dddddddddd");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"eeeeeeeeee");
}

#[tokio::test(start_paused = true)]
async fn follow_notices_a_same_length_rewrite_with_different_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "aaaa\nbbbb\n").unwrap();
    let mut lines = follow_on(&Tokio, &path, ms(100), 64, true).unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"aaaa");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"bbbb");
    std::fs::write(&path, "cccc\ndddd\neeee\n").unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"cccc");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"dddd");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"eeee");
}

#[tokio::test(start_paused = true)]
async fn follow_reads_megabytes_appended_at_once_without_losing_a_line_at_chunk_edges() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "").unwrap();
    let mut lines = follow_on(&Tokio, &path, ms(100), 64, true).unwrap();
    assert!(tokio::time::timeout(ms(300), lines.next()).await.is_err());
    let n = 300_000u32;
    let mut big = String::new();
    for i in 0..n {
        big.push_str(&format!("line {i}\n"));
    }
    append(&path, big.as_bytes());
    for i in 0..n {
        let l = lines.next().await.unwrap().unwrap();
        assert_eq!(l, format!("line {i}").as_bytes(), "line {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn follow_with_an_unbounded_max_line_is_a_typed_error_or_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "a\n").unwrap();
    match follow_on(&Tokio, &path, ms(100), usize::MAX, true) {
        Err(e) => assert!(matches!(e, ConfigError::OutOfRange { .. }), "{e:?}"),
        Ok(mut lines) => assert_eq!(lines.next().await.unwrap().unwrap(), b"a"),
    }
}

#[tokio::test(start_paused = true)]
async fn follow_reports_a_growing_overlong_partial_line_once_and_drops_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "ok1\n").unwrap();
    let mut lines = follow_on(&Tokio, &path, ms(100), 8, true).unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"ok1");
    append(&path, &[b'x'; 20]); // no newline yet
    let e = lines.next().await.unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    append(&path, &[b'x'; 20]);
    assert!(
        tokio::time::timeout(ms(500), lines.next()).await.is_err(),
        "one error per overlong line"
    );
    append(&path, b"yyy\nok2\n");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"ok2");
}

#[tokio::test(start_paused = true)]
async fn follow_drops_a_partial_last_line_of_a_truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "a\npartial").unwrap();
    let mut lines = follow_on(&Tokio, &path, ms(100), 64, true).unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"a");
    assert!(tokio::time::timeout(ms(500), lines.next()).await.is_err());
    std::fs::write(&path, "b\n").unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"b");
}

#[tokio::test(start_paused = true)]
async fn follow_waits_for_a_missing_file_and_reads_it_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("later.log");
    let mut lines = follow_on(&Tokio, &path, ms(100), 64, false).unwrap();
    assert!(tokio::time::timeout(ms(1000), lines.next()).await.is_err());
    std::fs::write(&path, "hello\nworld\n").unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"hello");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"world");
}

#[tokio::test(start_paused = true)]
async fn follow_drops_a_partial_last_line_of_a_rotated_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "a\npar").unwrap();
    let mut lines = follow_on(&Tokio, &path, ms(100), 64, true).unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"a");
    assert!(tokio::time::timeout(ms(500), lines.next()).await.is_err());
    std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
    std::fs::write(&path, "b\n").unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"b");
}

#[tokio::test(start_paused = true)]
async fn follow_after_two_rotations_between_polls_reads_the_open_file_and_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "1\n").unwrap();
    let mut lines = follow_on(&Tokio, &path, ms(100), 64, true).unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"1");
    append(&path, b"2\n");
    std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
    std::fs::write(&path, "3\n").unwrap();
    std::fs::rename(&path, dir.path().join("a.log.2")).unwrap();
    std::fs::write(&path, "4\n").unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"2");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"4");
    assert!(tokio::time::timeout(ms(1000), lines.next()).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn follow_delivers_io_errors_as_items_and_recovers_when_a_file_replaces_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::create_dir(&path).unwrap(); // reading a directory fails (EISDIR)
    let mut lines = follow_on(&Tokio, &path, ms(100), 64, true).unwrap();
    let first = tokio::time::timeout(ms(1000), lines.next()).await;
    assert!(
        matches!(first, Ok(Some(Err(_)))),
        "an unreadable path is an error item: {first:?}"
    );
    std::fs::remove_dir(&path).unwrap();
    std::fs::write(&path, "x\ny\n").unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        match lines.next().await.unwrap() {
            Ok(l) => got.push(l),
            Err(e) => assert!(got.is_empty(), "error after recovery: {e}"),
        }
    }
    assert_eq!(got, [b"x".to_vec(), b"y".to_vec()]);
}

#[test]
fn watch_dir_on_a_missing_directory_is_a_notify_error() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        assert!(matches!(
            watch_dir_on(&Tokio, &missing, ms(10)),
            Err(WatchError::Notify(_))
        ));
    });
}

// ---------------------------------------------------------------------------------------------
// fs::write_atomic: "dropping the future at any await point leaves the old file or the
// complete new one. Before the rename, the temporary file is removed on drop" / "carrying over
// the old file's permissions" / "Any I/O error ...; the target is then untouched and the
// temporary file removed."
// ---------------------------------------------------------------------------------------------

fn dir_entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_atomic_creates_replaces_and_keeps_permissions() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cfg");
    tidewall::fs::write_atomic(&Tokio, &path, b"v1".to_vec())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"v1");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    tidewall::fs::write_atomic(&Tokio, &path, vec![b'z'; 1 << 20])
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), vec![b'z'; 1 << 20]);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "permissions not carried over");
    tidewall::fs::write_atomic(&Tokio, &path, Vec::new())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"");
    assert_eq!(dir_entries(dir.path()), ["cfg"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_atomic_over_a_read_only_file_carries_the_mode_and_succeeds() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro");
    std::fs::write(&path, b"old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    tidewall::fs::write_atomic(&Tokio, &path, b"new".to_vec())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o400);
    assert_eq!(dir_entries(dir.path()), ["ro"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_atomic_into_a_missing_directory_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("cfg");
    let e = tidewall::fs::write_atomic(&Tokio, &path, b"x".to_vec())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    assert!(dir_entries(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_atomic_over_a_directory_fails_leaves_it_untouched_and_removes_the_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("sub");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("inner"), b"keep").unwrap();
    let rt = Counting::default();
    let r = tidewall::fs::write_atomic(&rt, &target, b"x".to_vec()).await;
    rt.settle().await;
    assert!(r.is_err());
    assert!(target.is_dir());
    assert_eq!(std::fs::read(target.join("inner")).unwrap(), b"keep");
    assert_eq!(dir_entries(dir.path()), ["sub"], "stray temporary file");
}

#[tokio::test(start_paused = true)]
async fn write_atomic_dropped_after_any_number_of_polls_leaves_old_or_new_and_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.bin");
    let rt = Counting::default();
    let mut rng = SplitMix64::new(71);
    let mut current = b"generation 0".to_vec();
    std::fs::write(&path, &current).unwrap();
    let mut saw_old = false;
    for generation in 1..=120u32 {
        let new: Vec<u8> = format!("generation {generation} ")
            .into_bytes()
            .into_iter()
            .chain(std::iter::repeat_n(
                b'#',
                to_usize(rng.below_or_equal(200_000)),
            ))
            .collect();
        let polls = rng.below_or_equal(12);
        let mut fut = Box::pin(tidewall::fs::write_atomic(&rt, &path, new.clone()));
        let mut finished = false;
        for _ in 0..polls {
            let mut ctx = Context::from_waker(noop_waker_ref());
            if let Poll::Ready(r) = fut.as_mut().poll(&mut ctx) {
                r.unwrap();
                finished = true;
                break;
            }
            // Let the blocking step make progress (or not) between polls; virtual time does not
            // advance while a blocking job runs, so a virtual sleep waits for it.
            if rng.below_or_equal(1) == 0 {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(ms(1)).await;
            }
        }
        // Right after the drop, and after the detached steps ended: old or complete new.
        drop(fut);
        let now = std::fs::read(&path).unwrap();
        assert!(
            now == current || now == new,
            "gen {generation}: partial contents"
        );
        rt.settle().await;
        let after = std::fs::read(&path).unwrap();
        assert!(
            after == current || after == new,
            "gen {generation}: partial contents"
        );
        if finished {
            assert_eq!(after, new, "gen {generation}: finished but not written");
        }
        if after == new {
            current = new;
        } else {
            saw_old = true;
        }
        assert_eq!(
            dir_entries(dir.path()),
            ["data.bin"],
            "gen {generation} ({polls} polls): stray temporary file"
        );
    }
    assert!(saw_old, "a future dropped unpolled must leave the old file");
    tidewall::fs::write_atomic(&rt, &path, b"last".to_vec())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"last");
    assert_eq!(dir_entries(dir.path()), ["data.bin"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_atomic_concurrent_writers_to_one_path_leave_one_complete_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared");
    std::fs::write(&path, b"initial").unwrap();
    let rt = Counting::default();
    let versions: Vec<Vec<u8>> = (0..16u8)
        .map(|i| vec![b'a' + i; 1000 + usize::from(i) * 7919])
        .collect();
    let writes = versions.iter().map(|v| {
        let (rt, path, v) = (rt.clone(), path.clone(), v.clone());
        tokio::spawn(async move { tidewall::fs::write_atomic(&rt, &path, v).await })
    });
    for r in futures_util::future::join_all(writes).await {
        r.unwrap().unwrap();
    }
    rt.settle().await;
    let now = std::fs::read(&path).unwrap();
    assert!(versions.contains(&now), "a mixed or partial version");
    assert_eq!(dir_entries(dir.path()), ["shared"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_atomic_reports_a_panicking_blocking_step_as_an_error_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cfg");
    std::fs::write(&path, b"old").unwrap();
    // How many blocking steps a write takes.
    let probe = PanicAt {
        inner: Counting::default(),
        calls: Arc::new(AtomicUsize::new(0)),
        fail_at: usize::MAX,
    };
    tidewall::fs::write_atomic(&probe, &path, b"old".to_vec())
        .await
        .unwrap();
    let steps = probe.calls.load(SeqCst);
    assert!(steps >= 1);
    for fail_at in 0..steps {
        let rt = PanicAt {
            inner: Counting::default(),
            calls: Arc::new(AtomicUsize::new(0)),
            fail_at,
        };
        let e = tidewall::fs::write_atomic(&rt, &path, b"new contents".to_vec())
            .await
            .expect_err("a panicking step is an error");
        rt.inner.settle().await;
        assert!(e.kind() == io::ErrorKind::Other, "step {fail_at}: {e:?}");
        let now = std::fs::read(&path).unwrap();
        assert!(
            now == b"old" || now == b"new contents",
            "step {fail_at}: partial file"
        );
        assert_eq!(
            dir_entries(dir.path()),
            ["cfg"],
            "step {fail_at}: stray temp"
        );
        std::fs::write(&path, b"old").unwrap();
    }
}
