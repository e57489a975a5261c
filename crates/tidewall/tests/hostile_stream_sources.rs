//! Hostile black-box tests of the stream sources in `tidewall::stream`, written from their
//! rustdoc alone: `generator` (capacity bound, backpressure, producer only advancing while
//! polled, drops at seeded random points, producer panics, end of stream), `Interval`
//! (exact schedules, missed ticks after idle gaps of days, lateness at and below one period,
//! jitter, cancelled `next()`), `LineReader` (lines at the exact maximum, with and without a
//! trailing newline, CRLF and invalid UTF-8 verbatim, huge lines, errors mid-stream, end of
//! input), `BlockingReader` (files many chunks long, errors and panics of the reader, the first
//! read starting at once, detached reads) and `DirWatch` (files created, renamed and removed
//! quickly, overflow, nesting). Sources are composed the way users compose them: with
//! `par_map`, `batch`, `timeout_each`, in a `Scope`, under cancellation. Time is virtual
//! (`Clocked`, on every runtime adapter) wherever it matters.

mod common;

use std::collections::BTreeSet;
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::ms;
use common::rng::Rng;
use futures_util::io::{AsyncRead, AsyncReadExt};
use futures_util::{Stream, StreamExt};
use tidewall::ConfigError;
use tidewall::FutureExt as _;
use tidewall::rt::{Clock, Runtime};
use tidewall::stream::{
    BlockingReader, DirChanges, LineReader, LinesError, MAX_BUFFER, MissedTicks, Overlong,
    StreamOps, WatchError, generator, interval_on, watch_dir_on,
};
use tidewall::task::scope::Scope;
use tidewall::task::{CancellationToken, Exit};
use tidewall::testing::{Clocked, FakeClock};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("fits")
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).expect("fits")
}

/// Counts its own drops: an item that leaks is never counted.
struct Token {
    n: u64,
    drops: Arc<AtomicUsize>,
}

impl Drop for Token {
    fn drop(&mut self) {
        self.drops.fetch_add(1, SeqCst);
    }
}

/// Sets its flag when dropped (a producer's locals, a reader).
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// An in-memory async reader handing out at most the next of `sizes` (cycled) bytes per read,
/// failing with a (non-`Interrupted`) error on the read calls listed in `fail_at`.
struct Chunks {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    turn: usize,
    calls: usize,
    fail_at: BTreeSet<usize>,
}

impl Chunks {
    fn new(data: Vec<u8>, sizes: Vec<usize>) -> Self {
        Self {
            data,
            pos: 0,
            sizes,
            turn: 0,
            calls: 0,
            fail_at: BTreeSet::new(),
        }
    }
}

impl AsyncRead for Chunks {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.calls += 1;
        if this.fail_at.contains(&this.calls) {
            return Poll::Ready(Err(io::Error::other("injected failure")));
        }
        let size = this.sizes[this.turn % this.sizes.len()];
        this.turn += 1;
        let n = size.min(buf.len()).min(this.data.len() - this.pos);
        buf[..n].copy_from_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(n))
    }
}

/// Every line `LineReader` delivers until the end or the first error, and how many batches
/// (each checked non-empty) carried them.
async fn drain_lines<Rd: AsyncRead + Unpin>(
    lines: &mut LineReader<Rd>,
) -> (Vec<Vec<u8>>, Result<(), LinesError>) {
    let mut out = Vec::new();
    loop {
        match lines.next_batch().await {
            Ok(Some(batch)) => {
                let before = out.len();
                out.extend(batch.lines().map(<[u8]>::to_vec));
                assert!(out.len() > before, "a batch is never empty");
            }
            Ok(None) => return (out, Ok(())),
            Err(e) => return (out, Err(e)),
        }
    }
}

fn now_or_never<F: std::future::Future>(f: F) -> Option<F::Output> {
    futures_util::FutureExt::now_or_never(f)
}

/// `count` numbered lines, `line NNNNNN` each, newline-terminated.
fn numbered_lines(count: u64) -> Vec<u8> {
    let mut data = Vec::new();
    for n in 0..count {
        writeln!(data, "line {n:06}").unwrap();
    }
    data
}

fn parse_numbered(line: &[u8]) -> u64 {
    std::str::from_utf8(line)
        .unwrap()
        .strip_prefix("line ")
        .unwrap()
        .parse()
        .unwrap()
}

/// Pseudo-random bytes from a seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next().to_le_bytes()[3]).collect()
}

// =============================================================================================
// generator
// =============================================================================================

/// "ConfigError::Zero for a zero capacity; ConfigError::OutOfRange for one over 2^30."
#[test]
fn generator_capacity_extremes_are_typed_errors_and_one_and_the_maximum_work() {
    let noop = |_y: tidewall::stream::Yielder<u8>| async {};
    assert!(matches!(generator(0, noop), Err(ConfigError::Zero { .. })));
    assert!(matches!(
        generator((1 << 30) + 1, noop),
        Err(ConfigError::OutOfRange { .. })
    ));
    assert!(matches!(
        generator(usize::MAX, noop),
        Err(ConfigError::OutOfRange { .. })
    ));
    for capacity in [1, 1 << 30] {
        let g = generator(capacity, |mut y| async move {
            for n in 0..100u32 {
                if !y.yield_(n).await {
                    return;
                }
            }
        })
        .unwrap();
        let got: Vec<u32> = now_or_never(g.collect()).unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>(), "capacity {capacity}");
    }
}

/// "at most `capacity` items wait between producer and consumer" and "it advances only while
/// the stream is polled": counted by the yields that returned `true`, checked after every item
/// and across every pause of the consumer.
async fn generator_run_ahead_is_bounded_by_capacity<R: Runtime>(rt: Clocked<R>) {
    for (seed, capacity) in [(1u64, 1usize), (2, 2), (3, 3), (4, 7)] {
        let mut rng = Rng::new(seed);
        let pauses: Vec<u64> = (0..60).map(|_| rng.below(4)).collect();
        let handed = Arc::new(AtomicUsize::new(0));
        let consumed = Arc::new(AtomicUsize::new(0));
        let most_waiting = Arc::new(AtomicUsize::new(0));
        let (h, c, w, prt) = (
            Arc::clone(&handed),
            Arc::clone(&consumed),
            Arc::clone(&most_waiting),
            rt.clone(),
        );
        let mut g = Box::pin(
            generator(capacity, move |mut y| async move {
                for (n, pause) in pauses.into_iter().enumerate() {
                    if pause == 0 {
                        prt.sleep(ms(1)).await;
                    }
                    if !y.yield_(n).await {
                        return;
                    }
                    // Measured on the producer's side, the moment the item is handed over.
                    let waiting = h.fetch_add(1, SeqCst) + 1 - c.load(SeqCst);
                    w.fetch_max(waiting, SeqCst);
                }
            })
            .unwrap(),
        );
        while let Some(n) = g.next().await {
            assert_eq!(
                n,
                consumed.load(SeqCst),
                "in order, nothing lost or repeated"
            );
            consumed.fetch_add(1, SeqCst);
            let before = handed.load(SeqCst);
            rt.sleep(ms(1 + rng.below(5))).await;
            assert_eq!(
                handed.load(SeqCst),
                before,
                "the producer advanced while the stream was not polled"
            );
        }
        assert_eq!(consumed.load(SeqCst), 60);
        let most = most_waiting.load(SeqCst);
        assert!(
            most <= capacity,
            "capacity {capacity}: {most} items handed over and not yet taken at once"
        );
    }
}

#[test]
fn generator_run_ahead_is_bounded_by_capacity_on_every_runtime() {
    on_every_runtime!(generator_run_ahead_is_bounded_by_capacity);
}

/// Dropping the stream at seeded random points (also mid-`next()`): the producer's future is
/// dropped with it, every item made is dropped exactly once (none leaks in the buffer) and
/// the consumer saw an exact prefix.
async fn generator_dropped_at_random_points<R: Runtime>(rt: Clocked<R>) {
    for seed in 0..12u64 {
        let mut rng = Rng::new(seed * 7919 + 1);
        let capacity = 1 + to_usize(rng.below(4));
        let made = Arc::new(AtomicUsize::new(0));
        let drops = Arc::new(AtomicUsize::new(0));
        let stopped = Arc::new(AtomicBool::new(false));
        let pauses: Vec<u64> = (0..50).map(|_| rng.below(3)).collect();
        let (m, d, s, prt) = (
            Arc::clone(&made),
            Arc::clone(&drops),
            Arc::clone(&stopped),
            rt.clone(),
        );
        let mut g = Box::pin(
            generator(capacity, move |mut y| async move {
                let _alive = SetOnDrop(s);
                for (n, pause) in pauses.into_iter().enumerate() {
                    if pause > 0 {
                        prt.sleep(ms(pause)).await;
                    }
                    m.fetch_add(1, SeqCst);
                    let item = Token {
                        n: to_u64(n),
                        drops: Arc::clone(&d),
                    };
                    if !y.yield_(item).await {
                        return;
                    }
                }
                std::future::pending::<()>().await;
            })
            .unwrap(),
        );
        let take = rng.below(45);
        let mut got = Vec::new();
        while to_u64(got.len()) < take {
            match g.next().timeout_on(&rt, ms(rng.below(3))).await {
                Ok(Some(token)) => got.push(token.n),
                Ok(None) => panic!("seed {seed}: the stream ended early"),
                Err(_) => {} // the `next()` was dropped mid-wait
            }
        }
        // Sometimes drop it in the middle of one more `next()`.
        if rng.one_in(2) {
            let _ = g.next().timeout_on(&rt, ms(rng.below(2))).await;
        }
        let seen_before_drop = got.len();
        drop(g);
        assert!(
            stopped.load(SeqCst),
            "seed {seed}: the producer outlived its stream"
        );
        assert_eq!(
            made.load(SeqCst),
            drops.load(SeqCst),
            "seed {seed}: an item made by the producer was never dropped (leaked)"
        );
        assert_eq!(
            got[..seen_before_drop],
            (0..to_u64(seen_before_drop)).collect::<Vec<_>>()[..],
            "seed {seed}: lost or repeated items"
        );
    }
}

#[test]
fn generator_dropped_at_random_points_leaks_and_loses_nothing_on_every_runtime() {
    on_every_runtime!(generator_dropped_at_random_points);
}

/// "The producer runs inside this stream's `poll_next` (no task is spawned)": its panic is the
/// consumer's, so a scope child consuming it reads `Panicked` with the payload, never a
/// silent end of stream, and fail-fast cancels its sibling.
async fn generator_producer_panic_reaches_the_consumer<R: Runtime>(rt: Clocked<R>) {
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<usize, String>()
        .unwrap();
    let token = scope.token();
    scope
        .spawn(async move {
            token.cancelled().await;
            Ok(usize::MAX)
        })
        .await
        .unwrap();
    let prt = rt.clone();
    scope
        .spawn(async move {
            let mut g = Box::pin(
                generator(2, move |mut y| async move {
                    for n in 0..3usize {
                        prt.sleep(ms(1)).await;
                        if !y.yield_(n).await {
                            return;
                        }
                    }
                    prt.sleep(ms(1)).await;
                    panic!("producer exploded");
                })
                .unwrap(),
            );
            let mut seen = 0;
            while let Some(n) = g.next().await {
                assert_eq!(n, seen);
                seen += 1;
            }
            Ok(seen) // a panic turned into a quiet end of stream
        })
        .await
        .unwrap();
    let report = scope.join().await;
    assert_eq!(report.panicked, 1, "{report:?}");
    assert!(
        report.children.iter().any(
            |c| matches!(&c.exit, Exit::Panicked(p) if p.message() == Some("producer exploded"))
        ),
        "{report:?}"
    );
    assert!(
        report.cancel_reason.is_some(),
        "fail-fast cancels the sibling"
    );
    assert_eq!(
        report.succeeded, 1,
        "the sibling stopped when told: {report:?}"
    );
}

#[test]
fn generator_producer_panic_reaches_the_consumer_on_every_runtime() {
    on_every_runtime!(generator_producer_panic_reaches_the_consumer);
}

/// End of stream: everything the producer handed over before returning is delivered, then
/// `None` — and `None` again when polled after the end (also for a producer that yields
/// nothing).
#[test]
fn generator_delivers_its_buffer_after_the_producer_returns_and_stays_ended() {
    now_or_never(async {
        let mut g = Box::pin(
            generator(8, |mut y| async move {
                for n in 0..5u8 {
                    assert!(y.yield_(n).await);
                }
            })
            .unwrap(),
        );
        let mut got = Vec::new();
        while let Some(n) = g.next().await {
            got.push(n);
        }
        assert_eq!(got, [0, 1, 2, 3, 4]);
        for _ in 0..3 {
            assert_eq!(g.next().await, None, "polled after its end");
        }
        let mut empty = Box::pin(generator::<u8, _, _>(1, |_y| async {}).unwrap());
        for _ in 0..3 {
            assert_eq!(empty.next().await, None);
        }
    })
    .unwrap();
}

/// "Cancel safety: dropping the future drops `item` unsent": a producer that gives each yield a
/// seeded timeout. Exactly the items whose yield returned `true` arrive, once each, in order;
/// a timed-out item never arrives; every item is dropped exactly once.
async fn generator_timed_out_yields<R: Runtime>(rt: Clocked<R>) {
    for seed in 0..6u64 {
        let mut rng = Rng::new(seed + 100);
        let budgets: Vec<u64> = (0..40).map(|_| 1 + rng.below(4)).collect();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let timed_out = Arc::new(Mutex::new(Vec::new()));
        let drops = Arc::new(AtomicUsize::new(0));
        let (s, t, d, prt) = (
            Arc::clone(&sent),
            Arc::clone(&timed_out),
            Arc::clone(&drops),
            rt.clone(),
        );
        let mut g = Box::pin(
            generator(1, move |mut y| async move {
                for (n, budget) in budgets.into_iter().enumerate() {
                    let item = Token {
                        n: to_u64(n),
                        drops: Arc::clone(&d),
                    };
                    match y.yield_(item).timeout_on(&prt, ms(budget)).await {
                        Ok(true) => s.lock().unwrap().push(to_u64(n)),
                        Ok(false) => return,
                        Err(_) => t.lock().unwrap().push(to_u64(n)),
                    }
                }
            })
            .unwrap(),
        );
        let mut got = Vec::new();
        while let Some(token) = g.next().await {
            got.push(token.n);
            drop(token);
            rt.sleep(ms(rng.below(5))).await;
        }
        let sent = sent.lock().unwrap().clone();
        let timed_out = timed_out.lock().unwrap().clone();
        assert_eq!(got, sent, "seed {seed}: exactly the sent items, in order");
        assert!(
            got.iter().all(|n| !timed_out.contains(n)),
            "seed {seed}: an item whose yield was dropped arrived anyway: {got:?} / {timed_out:?}"
        );
        assert_eq!(sent.len() + timed_out.len(), 40, "seed {seed}");
        assert_eq!(
            drops.load(SeqCst),
            40,
            "seed {seed}: every item dropped once"
        );
    }
}

#[test]
fn generator_timed_out_yields_drop_their_item_unsent_on_every_runtime() {
    on_every_runtime!(generator_timed_out_yields);
}

/// Composed with `par_map`: a consumer that stalls for an hour finds the producer at most
/// `capacity + limit` items ahead (each operator holds a bounded amount), and the mapped
/// results arrive complete and in order.
async fn generator_behind_par_map<R: Runtime>(rt: Clocked<R>) {
    let (capacity, limit) = (3usize, 4usize);
    let handed = Arc::new(AtomicUsize::new(0));
    let (h, prt) = (Arc::clone(&handed), rt.clone());
    let g = generator(capacity, move |mut y| async move {
        for n in 0..200u64 {
            if n % 3 == 0 {
                prt.sleep(ms(1)).await;
            }
            if !y.yield_(n).await {
                return;
            }
            h.fetch_add(1, SeqCst);
        }
    })
    .unwrap();
    let wrt = rt.clone();
    let mut mapped = Box::pin(
        g.par_map_on(&rt, limit, move |n| {
            let wrt = wrt.clone();
            async move {
                wrt.sleep(ms(n % 5)).await;
                n * 2
            }
        })
        .unwrap(),
    );
    let mut delivered = 0usize;
    while let Some(result) = mapped.next().await {
        assert_eq!(result.unwrap(), to_u64(delivered) * 2);
        delivered += 1;
        if delivered % 50 == 1 {
            rt.sleep(Duration::from_secs(3600)).await;
            let ahead = handed.load(SeqCst).saturating_sub(delivered);
            assert!(
                ahead <= capacity + limit,
                "{ahead} items produced and not delivered (capacity {capacity}, limit {limit})"
            );
        }
    }
    assert_eq!(delivered, 200);
}

#[test]
fn generator_behind_par_map_stays_bounded_and_ordered_on_every_runtime() {
    on_every_runtime!(generator_behind_par_map);
}

/// Composed with `batch`: one batch held, at most `capacity` waiting behind it.
async fn generator_behind_batch<R: Runtime>(rt: Clocked<R>) {
    let (capacity, max_items) = (2usize, 5usize);
    let handed = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&handed);
    let g = generator(capacity, move |mut y| async move {
        for n in 0..23u32 {
            if !y.yield_(n).await {
                return;
            }
            h.fetch_add(1, SeqCst);
        }
    })
    .unwrap();
    let mut batches = Box::pin(g.batch_on(&rt, max_items, ms(10)).unwrap());
    let mut taken = 0usize;
    let mut all = Vec::new();
    while let Some(batch) = batches.next().await {
        assert!(!batch.is_empty() && batch.len() <= max_items, "{batch:?}");
        taken += batch.len();
        all.extend(batch);
        rt.sleep(Duration::from_secs(60)).await;
        let ahead = handed.load(SeqCst).saturating_sub(taken);
        assert!(
            ahead <= capacity + max_items,
            "{ahead} items produced beyond the batches taken"
        );
    }
    assert_eq!(all, (0..23).collect::<Vec<_>>());
}

#[test]
fn generator_behind_batch_stays_bounded_on_every_runtime() {
    on_every_runtime!(generator_behind_batch);
}

/// Composed with `timeout_each`: the producer's own slowness (its timers run inside the
/// stream's poll) is reported once per slow item, and the item still arrives.
async fn generator_through_timeout_each<R: Runtime>(rt: Clocked<R>) {
    let start = rt.now();
    let prt = rt.clone();
    let g = generator(4, move |mut y| async move {
        for (n, delay) in [5u64, 50, 5, 120, 0].into_iter().enumerate() {
            prt.sleep(ms(delay)).await;
            if !y.yield_(n).await {
                return;
            }
        }
    })
    .unwrap();
    let mut s = Box::pin(g.timeout_each_on(&rt, ms(30)).unwrap());
    let mut seen = Vec::new();
    while let Some(item) = s.next().await {
        let at = (rt.now() - start).as_millis();
        seen.push((item.ok(), at));
    }
    assert_eq!(
        seen,
        [
            (Some(0), 5),
            (None, 35),
            (Some(1), 55),
            (Some(2), 60),
            (None, 90),
            (Some(3), 180),
            (Some(4), 180),
        ]
    );
}

#[test]
fn generator_through_timeout_each_reports_each_slow_item_once_on_every_runtime() {
    on_every_runtime!(generator_through_timeout_each);
}

/// In a scope child, stopped by cancellation at seeded random instants: the child ends, the
/// producer is dropped with the stream, and what was consumed is an exact prefix.
async fn generator_in_a_cancelled_scope<R: Runtime>(rt: Clocked<R>) {
    for seed in 0..5u64 {
        let mut rng = Rng::new(seed + 40);
        let scope = Scope::builder()
            .runtime(rt.clone())
            .build::<Vec<u64>, String>()
            .unwrap();
        let token = scope.token();
        let stopped = Arc::new(AtomicBool::new(false));
        let (s, prt) = (Arc::clone(&stopped), rt.clone());
        let crt = rt.clone();
        scope
            .spawn(async move {
                let mut g = Box::pin(
                    generator(2, move |mut y| async move {
                        let _alive = SetOnDrop(s);
                        let mut n = 0u64;
                        loop {
                            prt.sleep(ms(1 + n % 3)).await;
                            if !y.yield_(n).await {
                                return;
                            }
                            n += 1;
                        }
                    })
                    .unwrap(),
                );
                let mut got = Vec::new();
                while let Ok(Some(n)) = token.run_until_cancelled(g.next()).await {
                    got.push(n);
                    crt.sleep(ms(n % 2)).await;
                }
                Ok(got)
            })
            .await
            .unwrap();
        rt.sleep(ms(1 + rng.below(200))).await;
        scope.cancel("enough");
        let report = scope.join().await;
        assert_eq!(report.succeeded, 1, "seed {seed}: {report:?}");
        let Exit::Ok(got) = &report.children[0].exit else {
            panic!("seed {seed}: {report:?}");
        };
        assert_eq!(*got, (0..to_u64(got.len())).collect::<Vec<_>>());
        assert!(stopped.load(SeqCst), "seed {seed}: the producer still runs");
    }
}

#[test]
fn generator_in_a_cancelled_scope_stops_its_producer_on_every_runtime() {
    on_every_runtime!(generator_in_a_cancelled_scope);
}

/// A `Yielder` handed to a scope child (a producer on its own task): `yield_` waits while the
/// buffer is full, so the task is at most `capacity` ahead of a stalled consumer; it returns
/// `false` once the stream is dropped, so the task ends and the scope closes.
async fn generator_yielder_in_a_scope_child<R: Runtime>(rt: Clocked<R>) {
    for seed in 0..4u64 {
        let mut rng = Rng::new(seed + 7);
        let capacity = 1 + to_usize(rng.below(3));
        let scope = Scope::builder()
            .runtime(rt.clone())
            .build::<u64, String>()
            .unwrap();
        let (tx, rx) = futures_channel::oneshot::channel();
        let mut g = Box::pin(
            generator(capacity, move |y| async move {
                let _ = tx.send(y);
            })
            .unwrap(),
        );
        // The producer runs at the first poll: hand the yielder over then.
        let first = g.next().timeout_on(&rt, ms(1)).await;
        assert!(first.is_err(), "nothing yielded yet: {first:?}");
        let mut y = rx.await.unwrap();
        let handed = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&handed);
        scope
            .spawn(async move {
                let mut n = 0u64;
                while y.yield_(n).await {
                    h.fetch_add(1, SeqCst);
                    n += 1;
                }
                Ok(n)
            })
            .await
            .unwrap();
        let take = 1 + rng.below(20);
        for expected in 0..take {
            assert_eq!(g.next().await, Some(expected), "seed {seed}");
            rt.sleep(Duration::from_secs(600)).await;
            let ahead = handed.load(SeqCst).saturating_sub(to_usize(expected) + 1);
            assert!(
                ahead <= capacity,
                "seed {seed}: the producer task ran {ahead} ahead (capacity {capacity})"
            );
        }
        drop(g);
        let report = scope.join().await;
        assert_eq!(report.succeeded, 1, "seed {seed}: {report:?}");
    }
}

#[test]
fn generator_yielder_in_a_scope_child_is_bounded_and_stops_on_every_runtime() {
    on_every_runtime!(generator_yielder_in_a_scope_child);
}

// =============================================================================================
// Interval
// =============================================================================================

const MODES: [MissedTicks; 3] = [MissedTicks::Burst, MissedTicks::Delay, MissedTicks::Skip];

/// "ConfigError::Zero for a zero period; ConfigError::DurationOverflow for one beyond u64
/// nanoseconds" (and the same for jitter); the largest period is accepted and does not tick
/// within a year.
#[test]
fn interval_config_extremes_are_typed_errors_or_wait() {
    let clock = FakeClock::new();
    let largest = Duration::from_nanos(u64::MAX);
    for mode in MODES {
        assert!(matches!(
            interval_on(&clock, Duration::ZERO, mode),
            Err(ConfigError::Zero { .. })
        ));
        for too_long in [largest + Duration::from_nanos(1), Duration::MAX] {
            assert!(matches!(
                interval_on(&clock, too_long, mode),
                Err(ConfigError::DurationOverflow { .. })
            ));
            let ok = interval_on(&clock, ms(10), mode).unwrap();
            assert!(matches!(
                ok.jitter(too_long, 1),
                Err(ConfigError::DurationOverflow { .. })
            ));
        }
        let ok = interval_on(&clock, ms(10), mode).unwrap();
        assert!(ok.jitter(Duration::ZERO, 1).is_ok());
    }
    common::on_tokio_current_thread(|rt| async move {
        let mut t = Box::pin(interval_on(&rt, largest, MissedTicks::Skip).unwrap());
        assert!(
            t.next()
                .timeout_on(&rt, Duration::from_secs(365 * 86_400))
                .await
                .is_err(),
            "a ~584-year period ticked within a year"
        );
    });
}

/// "a consumer that is never late keeps the schedule" — in every mode: each item is its
/// scheduled instant and arrives at that instant, for a consumer that works (less than a
/// period) on every tick.
async fn interval_on_time_consumer<R: Runtime>(rt: Clocked<R>) {
    for mode in MODES {
        let start = rt.now();
        let p = ms(10);
        let mut t = Box::pin(interval_on(&rt, p, mode).unwrap());
        for k in 1..=30u32 {
            let tick = t.next().await.unwrap();
            assert_eq!(tick, start + p * k, "{mode:?} tick {k}");
            assert_eq!(rt.now(), tick, "{mode:?} tick {k} arrived late");
            rt.sleep(ms(u64::from(k % 10))).await;
        }
    }
}

#[test]
fn interval_on_time_consumer_keeps_the_exact_schedule_on_every_runtime() {
    on_every_runtime!(interval_on_time_consumer);
}

/// `Skip` after an idle gap of days: "Deliver one tick now (the earliest missed point) and
/// drop the other missed ones; the next tick is the first point of the original schedule
/// after the late one was delivered, however long the stall".
async fn interval_skip_after_days<R: Runtime>(rt: Clocked<R>) {
    let start = rt.now();
    let p = Duration::from_secs(7);
    let mut t = Box::pin(interval_on(&rt, p, MissedTicks::Skip).unwrap());
    assert_eq!(t.next().await, Some(start + p));
    rt.sleep(Duration::from_secs(3 * 86_400 + 5)).await;
    let stalled_until = rt.now();
    assert_eq!(
        t.next().await,
        Some(start + p * 2),
        "the earliest missed point"
    );
    assert_eq!(rt.now(), stalled_until, "delivered at once");
    // 7 + 259_205 = 259_212 s; the next multiple of 7 strictly after is 259_217.
    for secs in [259_217u64, 259_224, 259_231] {
        let tick = t.next().await.unwrap();
        assert_eq!(tick, start + Duration::from_secs(secs));
        assert_eq!(rt.now(), tick);
    }
}

#[test]
fn interval_skip_after_an_idle_gap_of_days_resumes_on_schedule_on_every_runtime() {
    on_every_runtime!(interval_skip_after_days);
}

/// `Burst` after an idle gap of days: "Deliver every missed tick at once, then continue on the
/// original schedule: the count of ticks is exact".
async fn interval_burst_after_days<R: Runtime>(rt: Clocked<R>) {
    let start = rt.now();
    let p = Duration::from_secs(60);
    let mut t = Box::pin(interval_on(&rt, p, MissedTicks::Burst).unwrap());
    assert_eq!(t.next().await, Some(start + p));
    rt.sleep(Duration::from_secs(3 * 86_400 + 30)).await;
    let stalled_until = rt.now();
    // Points 2..=4321 minutes are due (4321 min <= 1 min + 3 days + 30 s).
    for k in 2..=4321u32 {
        assert_eq!(t.next().await, Some(start + p * k), "missed tick {k}");
    }
    assert_eq!(rt.now(), stalled_until, "the burst came at once");
    let tick = t.next().await.unwrap();
    assert_eq!(tick, start + p * 4322);
    assert_eq!(rt.now(), tick, "back on the original schedule");
}

#[test]
fn interval_burst_after_an_idle_gap_of_days_counts_every_tick_on_every_runtime() {
    on_every_runtime!(interval_burst_after_days);
}

/// `Delay` after an idle gap of days: "Deliver one tick now and restart the schedule from it
/// (the next tick is one period after this delivery)".
async fn interval_delay_after_days<R: Runtime>(rt: Clocked<R>) {
    let start = rt.now();
    let p = Duration::from_secs(7);
    let mut t = Box::pin(interval_on(&rt, p, MissedTicks::Delay).unwrap());
    assert_eq!(t.next().await, Some(start + p));
    rt.sleep(Duration::from_secs(3 * 86_400 + 5)).await;
    let delivered = rt.now();
    assert!(t.next().await.is_some());
    assert_eq!(rt.now(), delivered, "one tick at once");
    for k in 1..=3u32 {
        let tick = t.next().await.unwrap();
        assert_eq!(tick, delivered + p * k, "restarted from the delivery");
        assert_eq!(rt.now(), tick);
    }
}

#[test]
fn interval_delay_after_an_idle_gap_of_days_restarts_from_the_delivery_on_every_runtime() {
    on_every_runtime!(interval_delay_after_days);
}

/// Lateness below one period: "`Burst` and `Skip` keep the schedule until the lateness reaches
/// one period (a tick is missed); `Delay` also acts on less" ("Any lateness of the consumer
/// restarts it").
async fn interval_lateness_below_a_period<R: Runtime>(rt: Clocked<R>) {
    let p = ms(10);
    for mode in MODES {
        let start = rt.now();
        let mut t = Box::pin(interval_on(&rt, p, mode).unwrap());
        assert_eq!(t.next().await, Some(start + p));
        rt.sleep(ms(13)).await; // asks at 23 for the tick due at 20
        let late = t.next().await.unwrap();
        assert_eq!(
            rt.now(),
            start + ms(23),
            "{mode:?}: a late tick comes at once"
        );
        let next = t.next().await.unwrap();
        match mode {
            MissedTicks::Burst | MissedTicks::Skip => {
                assert_eq!(late, start + p * 2, "{mode:?}");
                assert_eq!(next, start + p * 3, "{mode:?}: the schedule is kept");
            }
            MissedTicks::Delay => {
                assert_eq!(
                    next,
                    start + ms(33),
                    "Delay restarts from the late delivery"
                );
            }
        }
        assert_eq!(rt.now(), next, "{mode:?}");
    }
}

#[test]
fn interval_lateness_below_a_period_keeps_or_restarts_the_schedule_on_every_runtime() {
    on_every_runtime!(interval_lateness_below_a_period);
}

/// Lateness of exactly one period (the consumer asks at 30 for the tick due at 20; the tick at
/// 30 is due too): `Burst` delivers both at once, `Skip` delivers 20 and drops 30 (its next is
/// the first point *after* the delivery), `Delay` restarts from 30.
async fn interval_lateness_of_exactly_one_period<R: Runtime>(rt: Clocked<R>) {
    let p = ms(10);
    for mode in MODES {
        let start = rt.now();
        let mut t = Box::pin(interval_on(&rt, p, mode).unwrap());
        assert_eq!(t.next().await, Some(start + p));
        rt.sleep(ms(20)).await;
        let mut got = Vec::new();
        while got.len() < 3 {
            let tick = t.next().await.unwrap();
            got.push(((tick - start).as_millis(), (rt.now() - start).as_millis()));
        }
        let expected: Vec<(u128, u128)> = match mode {
            MissedTicks::Burst => vec![(20, 30), (30, 30), (40, 40)],
            MissedTicks::Skip => vec![(20, 30), (40, 40), (50, 50)],
            MissedTicks::Delay => vec![(got[0].0, 30), (40, 40), (50, 50)],
        };
        assert_eq!(got, expected, "{mode:?}: (tick, delivered) in ms");
    }
}

#[test]
fn interval_lateness_of_exactly_one_period_on_every_runtime() {
    on_every_runtime!(interval_lateness_of_exactly_one_period);
}

/// A consumer already waiting (a `next()` polled before the tick) whose wake-up comes late, or
/// one that dropped that `next()` and asks again: "a wake-up the consumer was already waiting
/// for, made late by less than a period …, does not [restart `Delay`]" and "one that dropped
/// that `next()` … and asks again less than a period after the tick keeps the schedule too";
/// late by a period or more, each mode does what it says.
async fn interval_waiting_consumer_woken_late<R: Runtime>(rt: Clocked<R>) {
    let p = ms(10);
    for mode in MODES {
        for keep_waiting in [true, false] {
            for stall in [13u64, 25] {
                let start = rt.now();
                let mut t = Box::pin(interval_on(&rt, p, mode).unwrap());
                let mut next = t.next();
                let first =
                    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut next).poll(cx))).await;
                assert!(first.is_pending(), "nothing is due at the start");
                let late = if keep_waiting {
                    rt.sleep(ms(stall)).await;
                    next.await.unwrap()
                } else {
                    drop(next);
                    rt.sleep(ms(stall)).await;
                    t.next().await.unwrap()
                };
                let case = format!("{mode:?} waiting {keep_waiting} stall {stall}");
                assert_eq!(
                    rt.now(),
                    start + ms(stall),
                    "{case}: the late tick comes at once"
                );
                let mut rest = Vec::new();
                while rest.len() < 2 {
                    let tick = t.next().await.unwrap();
                    rest.push(((tick - start).as_millis(), (rt.now() - start).as_millis()));
                }
                if mode != MissedTicks::Delay || stall == 13 {
                    assert_eq!(late, start + p, "{case}: the earliest missed point");
                }
                // (tick, delivered at), in ms from the start.
                let expected: [(u128, u128); 2] = match (stall, mode) {
                    (13, _) => [(20, 20), (30, 30)],
                    (_, MissedTicks::Burst) => [(20, 25), (30, 30)],
                    (_, MissedTicks::Skip) => [(30, 30), (40, 40)],
                    (_, MissedTicks::Delay) => [(35, 35), (45, 45)],
                };
                assert_eq!(rest, expected, "{case}");
            }
        }
    }
}

#[test]
fn interval_waiting_consumer_woken_late_keeps_or_restarts_as_documented_on_every_runtime() {
    on_every_runtime!(interval_waiting_consumer_woken_late);
}

/// "Cancel safety: dropping a `next()` future loses no tick: the tick it waited for is the
/// next one delivered" — `next()` dropped by seeded timeouts, asked again at once: every mode
/// delivers the exact schedule, no tick lost or repeated.
async fn interval_next_dropped_at_random<R: Runtime>(rt: Clocked<R>) {
    for (i, mode) in MODES.into_iter().enumerate() {
        let mut rng = Rng::new(900 + to_u64(i));
        let start = rt.now();
        let p = ms(10);
        let mut t = Box::pin(interval_on(&rt, p, mode).unwrap());
        let mut k = 1u32;
        let mut dropped = 0;
        while k <= 60 {
            match t.next().timeout_on(&rt, ms(rng.below(25))).await {
                Ok(tick) => {
                    assert_eq!(tick, Some(start + p * k), "{mode:?} tick {k}");
                    k += 1;
                }
                Err(_) => dropped += 1,
            }
        }
        assert!(dropped > 10, "the scenario dropped few futures: {dropped}");
    }
}

#[test]
fn interval_next_dropped_at_random_points_loses_no_tick_on_every_runtime() {
    on_every_runtime!(interval_next_dropped_at_random);
}

/// Jitter larger than the period: "a consumer on time gets every tick on the schedule, in
/// every MissedTicks mode, whatever the jitter", each at a wake-up delayed by at most the
/// jitter.
async fn interval_jitter_larger_than_the_period<R: Runtime>(rt: Clocked<R>) {
    for mode in MODES {
        for seed in [1u64, 2, 3] {
            let start = rt.now();
            let (p, jitter) = (ms(10), ms(25));
            let mut t = Box::pin(
                interval_on(&rt, p, mode)
                    .unwrap()
                    .jitter(jitter, seed)
                    .unwrap(),
            );
            let mut previous = start;
            for k in 1..=40u32 {
                let tick = t.next().await.unwrap();
                assert_eq!(tick, start + p * k, "{mode:?} seed {seed}: tick {k}");
                let now = rt.now();
                assert!(now >= tick, "{mode:?}: tick {k} came early");
                assert!(
                    now <= (tick + jitter).max(previous),
                    "{mode:?}: tick {k} came {:?} after its instant",
                    now - tick
                );
                previous = now;
            }
        }
    }
}

#[test]
fn interval_jitter_larger_than_the_period_costs_no_tick_on_every_runtime() {
    on_every_runtime!(interval_jitter_larger_than_the_period);
}

/// "Polls before the jittered wake-up (another stream woke the task) do not cut it short":
/// merged with a 1 ms interval that keeps waking the task, a jittered interval delivers at the
/// very instants it does alone.
async fn jittered_delivery_offsets<R: Runtime>(
    rt: &Clocked<R>,
    mode: MissedTicks,
    merged: bool,
) -> Vec<Duration> {
    let start = rt.now();
    let jittered = interval_on(rt, ms(10), mode)
        .unwrap()
        .jitter(ms(8), 77)
        .unwrap()
        .map(Some);
    let mut offsets = Vec::new();
    if merged {
        let noisy = interval_on(rt, ms(1), MissedTicks::Burst)
            .unwrap()
            .map(|_| None);
        let mut both = Box::pin(futures_util::stream::select(jittered, noisy));
        while offsets.len() < 25 {
            if let Some(Some(_)) = both.next().await {
                offsets.push(rt.now() - start);
            }
        }
    } else {
        let mut alone = Box::pin(jittered);
        while offsets.len() < 25 {
            alone.next().await.unwrap();
            offsets.push(rt.now() - start);
        }
    }
    offsets
}

async fn interval_jitter_not_cut_short<R: Runtime>(rt: Clocked<R>) {
    for mode in MODES {
        let alone = jittered_delivery_offsets(&rt, mode, false).await;
        let merged = jittered_delivery_offsets(&rt, mode, true).await;
        assert_eq!(alone, merged, "{mode:?}");
        assert!(
            alone
                .iter()
                .enumerate()
                .any(|(i, d)| *d != ms(10) * u32::try_from(i + 1).unwrap()),
            "{mode:?}: the jitter delayed nothing, so this proves nothing"
        );
    }
}

#[test]
fn interval_jitter_is_not_cut_short_by_polls_of_a_merged_stream_on_every_runtime() {
    on_every_runtime!(interval_jitter_not_cut_short);
}

/// A 1 ns period after a three-day stall (`Skip`): one late tick at once, then "the distance to
/// the next point is at most one period, whatever the stall".
async fn interval_nanosecond_period_after_days<R: Runtime>(rt: Clocked<R>) {
    let start = rt.now();
    let p = Duration::from_nanos(1);
    let mut t = Box::pin(interval_on(&rt, p, MissedTicks::Skip).unwrap());
    rt.sleep(Duration::from_secs(3 * 86_400)).await;
    let stalled_until = rt.now();
    assert_eq!(t.next().await, Some(start + p));
    assert_eq!(rt.now(), stalled_until);
    let next = t.next().await.unwrap();
    assert!(
        next > stalled_until && next <= stalled_until + p,
        "next tick {:?} after the stall end",
        next.checked_duration_since(stalled_until)
    );
    assert_eq!(rt.now(), next);
}

#[test]
fn interval_nanosecond_period_after_days_lands_within_one_period_on_every_runtime() {
    on_every_runtime!(interval_nanosecond_period_after_days);
}

/// Composed: `timeout_each` shorter than the period reports one `Elapsed` per tick, then the
/// tick; `batch` with a `max_wait` emits on time with the ticks gathered since its first.
async fn interval_composed_with_timeout_each_and_batch<R: Runtime>(rt: Clocked<R>) {
    let start = rt.now();
    let p = ms(10);
    let ticks = interval_on(&rt, p, MissedTicks::Skip).unwrap();
    let mut s = Box::pin(ticks.timeout_each_on(&rt, ms(4)).unwrap());
    for k in 1..=4u32 {
        assert!(s.next().await.unwrap().is_err(), "k {k}: elapsed first");
        assert_eq!(rt.now(), start + p * (k - 1) + ms(4));
        assert_eq!(s.next().await.unwrap().ok(), Some(start + p * k));
    }

    let start = rt.now();
    let ticks = interval_on(&rt, p, MissedTicks::Skip).unwrap();
    let mut b = Box::pin(ticks.batch_on(&rt, 100, ms(25)).unwrap());
    let first = b.next().await.unwrap();
    assert_eq!(first, [start + p, start + p * 2, start + p * 3]);
    assert_eq!(
        rt.now(),
        start + ms(35),
        "max_wait counts from the first item"
    );
    let second = b.next().await.unwrap();
    assert_eq!(second, [start + p * 4, start + p * 5, start + p * 6]);
    assert_eq!(rt.now(), start + ms(65));
}

#[test]
fn interval_composed_with_timeout_each_and_batch_on_every_runtime() {
    on_every_runtime!(interval_composed_with_timeout_each_and_batch);
}

/// "Never ends; stop it by dropping it (or with `take_until` on a cancellation)": in a scope
/// child, stopped by a token, every tick up to the cancellation is delivered and no timer is
/// left behind.
async fn interval_stopped_by_a_token_in_a_scope<R: Runtime>(rt: Clocked<R>) {
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<Vec<Instant>, String>()
        .unwrap();
    let stop = CancellationToken::new();
    let ticks = interval_on(&rt, ms(10), MissedTicks::Skip).unwrap();
    let start = rt.now();
    let child_stop = stop.clone();
    scope
        .spawn(async move {
            Ok(ticks
                .take_until(child_stop.cancelled_owned())
                .collect()
                .await)
        })
        .await
        .unwrap();
    rt.sleep(ms(105)).await;
    stop.cancel("stop ticking");
    let report = scope.join().await;
    let Exit::Ok(got) = &report.children[0].exit else {
        panic!("{report:?}");
    };
    let expected: Vec<Instant> = (1..=10u32).map(|k| start + ms(10) * k).collect();
    assert_eq!(*got, expected);
    assert_eq!(rt.now(), start + ms(105), "the join waited on nothing");
    assert_eq!(
        rt.clock().pending_timers(),
        0,
        "the dropped interval left a timer registered"
    );
}

#[test]
fn interval_stopped_by_a_token_in_a_scope_on_every_runtime() {
    on_every_runtime!(interval_stopped_by_a_token_in_a_scope);
}

// =============================================================================================
// LineReader
// =============================================================================================

/// "ConfigError::Zero for a zero buffer or max_line; ConfigError::OutOfRange when the buffer
/// would exceed MAX_BUFFER or cannot be allocated" and "its max_line is at most
/// MAX_BUFFER - 1".
#[test]
fn line_reader_config_extremes() {
    let empty: &[u8] = b"";
    assert!(matches!(
        LineReader::new(empty, 0, 1, Overlong::Error),
        Err(ConfigError::Zero { .. })
    ));
    assert!(matches!(
        LineReader::new(empty, 1, 0, Overlong::Skip),
        Err(ConfigError::Zero { .. })
    ));
    assert!(matches!(
        LineReader::new(empty, 16, MAX_BUFFER, Overlong::Error),
        Err(ConfigError::OutOfRange { .. })
    ));
    // The largest max_line: a typed refusal if 1 GiB cannot be had, else a working reader.
    let input: &[u8] = b"a\nbb";
    match LineReader::new(input, 16, MAX_BUFFER - 1, Overlong::Error) {
        Err(ConfigError::OutOfRange { .. }) => {}
        Err(other) => panic!("{other:?}"),
        Ok(mut lines) => {
            let (got, end) = now_or_never(drain_lines(&mut lines)).unwrap();
            assert!(end.is_ok());
            assert_eq!(got, [b"a".to_vec(), b"bb".to_vec()]);
        }
    }
    // The smallest: one-byte lines, and an empty line, fit.
    let mut lines = LineReader::new(&b"a\n\nb\ncc\nd"[..], 1, 1, Overlong::Skip).unwrap();
    let (got, end) = now_or_never(drain_lines(&mut lines)).unwrap();
    assert!(end.is_ok());
    assert_eq!(
        got,
        [b"a".to_vec(), Vec::new(), b"b".to_vec(), b"d".to_vec()]
    );
    assert_eq!(lines.skipped(), 1);
}

/// A line of exactly `max_line` bytes fits, also as a last line without `\n` ("a last line
/// without `\n` is delivered at end of input"); one byte more fails (`Error`, after the lines
/// before it) or is skipped (`Skip`), also as a last line without `\n`; whatever the read
/// sizes.
#[test]
fn line_reader_line_exactly_at_the_maximum_with_and_without_a_trailing_newline() {
    for max_line in [1usize, 7, 4096] {
        for sizes in [vec![1], vec![3, 1, 5], vec![1 << 20]] {
            let exact = |c: u8| vec![c; max_line];
            let over = vec![b'z'; max_line + 1];
            // x..x \n y..y (no newline at the end)
            let mut data = exact(b'x');
            data.push(b'\n');
            data.extend(exact(b'y'));
            let mut lines = LineReader::new(
                Chunks::new(data, sizes.clone()),
                1,
                max_line,
                Overlong::Error,
            )
            .unwrap();
            let (got, end) = now_or_never(drain_lines(&mut lines)).unwrap();
            assert!(end.is_ok(), "max {max_line} {sizes:?}: {end:?}");
            assert_eq!(got, [exact(b'x'), exact(b'y')], "max {max_line} {sizes:?}");

            // x..x \n z..z (one over, no newline at the end)
            let mut data = exact(b'x');
            data.push(b'\n');
            data.extend(&over);
            let mut lines = LineReader::new(
                Chunks::new(data.clone(), sizes.clone()),
                1,
                max_line,
                Overlong::Error,
            )
            .unwrap();
            let (got, end) = now_or_never(drain_lines(&mut lines)).unwrap();
            assert_eq!(got, [exact(b'x')], "max {max_line} {sizes:?}");
            assert!(
                matches!(end, Err(LinesError::TooLong { max }) if max == max_line),
                "max {max_line} {sizes:?}: an overlong last line without newline: {end:?}"
            );
            for _ in 0..2 {
                assert!(
                    matches!(
                        now_or_never(lines.next_batch()).unwrap(),
                        Err(LinesError::TooLong { .. })
                    ),
                    "max {max_line} {sizes:?}: every later call fails"
                );
            }
            let mut lines = LineReader::new(
                Chunks::new(data, sizes.clone()),
                1,
                max_line,
                Overlong::Skip,
            )
            .unwrap();
            let (got, end) = now_or_never(drain_lines(&mut lines)).unwrap();
            assert!(end.is_ok());
            assert_eq!(got, [exact(b'x')], "max {max_line} {sizes:?}");
            assert_eq!(lines.skipped(), 1, "max {max_line} {sizes:?}");
        }
    }
}

/// Huge lines: an 8 MiB line at exactly the maximum is delivered whole between small lines;
/// an 8 MiB + 1 line is skipped and reading goes on after it.
#[test]
fn line_reader_huge_lines_at_and_over_the_maximum() {
    let max_line = 8 << 20;
    let mut data = b"head\n".to_vec();
    data.extend(std::iter::repeat_n(b'h', max_line));
    data.extend(b"\nmid\n");
    data.extend(std::iter::repeat_n(b'o', max_line + 1));
    data.extend(b"\ntail\n");
    let mut lines = LineReader::new(
        Chunks::new(data, vec![64 * 1024, 1, 100_003]),
        64 * 1024,
        max_line,
        Overlong::Skip,
    )
    .unwrap();
    let (got, end) = now_or_never(drain_lines(&mut lines)).unwrap();
    assert!(end.is_ok(), "{end:?}");
    let lens: Vec<usize> = got.iter().map(Vec::len).collect();
    assert_eq!(lens, [4, max_line, 3, 4]);
    assert!(got[1].iter().all(|&b| b == b'h'));
    assert_eq!(got[2], b"mid");
    assert_eq!(got[3], b"tail");
    assert_eq!(lines.skipped(), 1);
}

/// "Bytes are delivered as they are … a trailing `\r` is kept": CR, CRLF, NUL, lone
/// continuation bytes and invalid UTF-8 come through verbatim, and the batches' raw bytes
/// ("whole lines, each ending in `\n` except possibly the last of the input") rebuild the
/// input exactly.
#[test]
fn line_reader_delivers_crlf_cr_nul_and_invalid_utf8_verbatim() {
    let data = b"a\r\n\r\n\rb\r\x00\xff\xfe\n\xc3\n\xa9\r\n\n\xf0\x9f\x92".to_vec();
    for sizes in [vec![1], vec![2, 5], vec![1000]] {
        let mut lines = LineReader::new(
            Chunks::new(data.clone(), sizes.clone()),
            4,
            16,
            Overlong::Error,
        )
        .unwrap();
        let mut got = Vec::new();
        let mut raw = Vec::new();
        now_or_never(async {
            while let Some(batch) = lines.next_batch().await.unwrap() {
                let bytes = batch.as_bytes();
                let whole = bytes.ends_with(b"\n") || raw.len() + bytes.len() == data.len();
                assert!(whole, "{sizes:?}: a batch ends mid-line: {bytes:?}");
                raw.extend_from_slice(bytes);
                got.extend(batch.lines().map(<[u8]>::to_vec));
            }
        })
        .unwrap();
        let expected: [&[u8]; 6] = [b"a\r", b"\r", b"\rb\r\x00\xff\xfe", b"\xc3", b"\xa9\r", b""];
        let mut expected: Vec<Vec<u8>> = expected.iter().map(|l| l.to_vec()).collect();
        expected.push(b"\xf0\x9f\x92".to_vec());
        assert_eq!(got, expected, "{sizes:?}");
        assert_eq!(raw, data, "{sizes:?}: the raw bytes are the input");
    }
}

/// End of input: `None`, and `None` again when asked after the end; an empty input, a lone
/// newline, and a last line without newline.
#[test]
fn line_reader_end_of_input_is_sticky() {
    let cases: [(&[u8], &[&[u8]]); 5] = [
        (b"", &[]),
        (b"\n", &[b""]),
        (b"\n\n", &[b"", b""]),
        (b"abc", &[b"abc"]),
        (b"abc\ndef", &[b"abc", b"def"]),
    ];
    for (input, expected) in cases {
        for overlong in [Overlong::Error, Overlong::Skip] {
            now_or_never(async {
                let mut lines = LineReader::new(input, 2, 8, overlong).unwrap();
                let (got, end) = drain_lines(&mut lines).await;
                assert!(end.is_ok());
                let expected: Vec<Vec<u8>> = expected.iter().map(|l| l.to_vec()).collect();
                assert_eq!(got, expected, "{input:?}");
                for _ in 0..3 {
                    assert!(
                        matches!(lines.next_batch().await, Ok(None)),
                        "{input:?}: asked after the end"
                    );
                }
            })
            .unwrap();
        }
    }
}

/// `Skip` over a thousand overlong lines in a small buffer: "a batch of only skipped lines is
/// not delivered (reading goes on)" — the first batch is the fitting line after them.
#[test]
fn line_reader_skip_mode_reads_past_a_thousand_overlong_lines_to_the_first_fitting_one() {
    let mut data = Vec::new();
    for n in 0..1000 {
        data.extend(std::iter::repeat_n(
            b'a' + u8::try_from(n % 26).unwrap(),
            11 + n % 50,
        ));
        data.push(b'\n');
    }
    data.extend(b"fits\n");
    data.extend(std::iter::repeat_n(b'q', 40));
    let mut lines = LineReader::new(Chunks::new(data, vec![7, 64]), 1, 10, Overlong::Skip).unwrap();
    now_or_never(async {
        let first = lines.next_batch().await.unwrap().unwrap();
        assert_eq!(first.lines().collect::<Vec<_>>(), [&b"fits"[..]]);
        assert!(lines.next_batch().await.unwrap().is_none());
    })
    .unwrap();
    assert_eq!(
        lines.skipped(),
        1001,
        "the overlong last line without newline too"
    );
}

/// "LinesError::Io from the reader: the partial line stays buffered, and the next call reads
/// on from there (a reader that fails once loses nothing)" — a reader failing at many seeded
/// points, with lines at the maximum: every failure comes back once, and the lines are exact.
#[test]
fn line_reader_io_errors_mid_stream_lose_and_repeat_nothing() {
    for seed in 0..20u64 {
        let mut rng = Rng::new(seed + 3000);
        let lines_in: Vec<Vec<u8>> = (0..200)
            .map(|i| vec![b'a' + u8::try_from(i % 26).unwrap(); to_usize(rng.below(17))])
            .collect();
        let mut data = lines_in.join(&b'\n');
        data.push(b'\n');
        let sizes: Vec<usize> = (0..5).map(|_| 1 + to_usize(rng.below(40))).collect();
        let mut reader = Chunks::new(data, sizes);
        reader.fail_at = (0..30).map(|_| 1 + to_usize(rng.below(400))).collect();
        let failures = reader.fail_at.len();
        let mut lines =
            LineReader::new(reader, 1 + to_usize(rng.below(32)), 16, Overlong::Error).unwrap();
        let mut got = Vec::new();
        let mut errors = 0;
        now_or_never(async {
            loop {
                match lines.next_batch().await {
                    Ok(Some(batch)) => got.extend(batch.lines().map(<[u8]>::to_vec)),
                    Ok(None) => break,
                    Err(LinesError::Io(_)) => errors += 1,
                    Err(other) => panic!("seed {seed}: {other:?}"),
                }
            }
        })
        .unwrap();
        assert_eq!(got, lines_in, "seed {seed}");
        // A failure scheduled after the reader was done is never reached.
        assert!(
            errors <= failures && errors > 0,
            "seed {seed}: {errors}/{failures}"
        );
    }
}

/// A `LineReader` over a `BlockingReader` over a real file many chunks long, its `next_batch`
/// polled once and dropped at seeded points (mid-read too): "dropped during a read, the bytes
/// that read had not returned yet are not lost" — every line once, in order.
async fn lines_from_a_file_with_dropped_next_batch<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("numbers.log");
    let count = 10_000u64;
    std::fs::write(&path, numbered_lines(count)).unwrap();
    let mut abandoned = 0;
    for seed in 0..3u64 {
        let mut rng = Rng::new(seed + 55);
        let file = std::fs::File::open(&path).unwrap();
        // Small chunks: most batches wait for a read in flight.
        let reader = BlockingReader::new(rt.clone(), file, 50 + to_usize(rng.below(100))).unwrap();
        let mut lines = LineReader::new(reader, 1000, 64, Overlong::Error).unwrap();
        let mut next = 0u64;
        loop {
            let batch = if rng.one_in(3) {
                let Some(batch) = now_or_never(owned_batch(&mut lines)) else {
                    abandoned += 1;
                    continue;
                };
                batch
            } else {
                owned_batch(&mut lines).await
            };
            let Some(batch) = batch.unwrap() else { break };
            for line in batch {
                assert_eq!(parse_numbered(&line), next, "seed {seed}");
                next += 1;
            }
        }
        assert_eq!(next, count, "seed {seed}");
    }
    assert!(
        abandoned > 0,
        "no next_batch was ever dropped: the scenario proves nothing"
    );
}

async fn owned_batch<Rd: AsyncRead + Unpin>(
    lines: &mut LineReader<Rd>,
) -> Result<Option<Vec<Vec<u8>>>, LinesError> {
    Ok(lines
        .next_batch()
        .await?
        .map(|batch| batch.lines().map(<[u8]>::to_vec).collect()))
}

#[test]
fn line_reader_over_a_file_with_dropped_next_batch_loses_nothing_on_every_runtime() {
    on_every_runtime!(lines_from_a_file_with_dropped_next_batch);
}

// =============================================================================================
// BlockingReader
// =============================================================================================

/// "ConfigError::Zero for a zero chunk size; ConfigError::OutOfRange for a chunk over
/// MAX_BUFFER or one that cannot be allocated": never an abort; a chunk of exactly
/// `MAX_BUFFER` either works or is a typed refusal.
#[test]
fn blocking_reader_chunk_extremes_are_typed_errors_or_work() {
    common::on_tokio_current_thread(|rt| async move {
        let cursor = || io::Cursor::new(b"abc\ndef".to_vec());
        assert!(matches!(
            BlockingReader::new(rt.clone(), cursor(), 0),
            Err(ConfigError::Zero { .. })
        ));
        for chunk in [MAX_BUFFER + 1, usize::MAX] {
            assert!(matches!(
                BlockingReader::new(rt.clone(), cursor(), chunk),
                Err(ConfigError::OutOfRange { .. })
            ));
        }
        match BlockingReader::new(rt.clone(), cursor(), MAX_BUFFER) {
            Err(ConfigError::OutOfRange { .. }) => {}
            Err(other) => panic!("{other:?}"),
            Ok(mut reader) => {
                let mut all = Vec::new();
                reader.read_to_end(&mut all).await.unwrap();
                assert_eq!(all, b"abc\ndef");
            }
        }
    });
}

/// A file of 1 MiB + 13 bytes (no chunk size divides it) read through random-sized reads,
/// with chunks of one byte, of a prime size and larger than the file: every byte once, in
/// order; then end of file, again and again.
async fn blocking_reader_reads_large_files_exactly<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noise.bin");
    let data = noise((1 << 20) + 13, 5);
    std::fs::write(&path, &data).unwrap();
    let small = noise(3000, 6);
    let small_path = dir.path().join("small.bin");
    std::fs::write(&small_path, &small).unwrap();
    for (chunk, path, expected) in [
        (4099usize, &path, &data),
        (1 << 16, &path, &data),
        (2 << 20, &path, &data),
        (1, &small_path, &small),
    ] {
        let mut rng = Rng::new(to_u64(chunk));
        let file = std::fs::File::open(path).unwrap();
        let mut reader = BlockingReader::new(rt.clone(), file, chunk).unwrap();
        let mut got = Vec::with_capacity(expected.len());
        let mut buf = vec![0u8; 3 * 4099];
        loop {
            let want = 1 + to_usize(rng.below(to_u64(buf.len())));
            let n = reader.read(&mut buf[..want]).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= want);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got.len(), expected.len(), "chunk {chunk}");
        assert!(got == *expected, "chunk {chunk}: the bytes differ");
        for _ in 0..3 {
            assert_eq!(
                reader.read(&mut buf).await.unwrap(),
                0,
                "read after the end"
            );
        }
    }
}

#[test]
fn blocking_reader_reads_files_larger_than_its_chunk_exactly_on_every_runtime() {
    on_every_runtime!(blocking_reader_reads_large_files_exactly);
}

/// A blocking reader that fails (with several error kinds) or is interrupted on seeded read
/// calls.
struct FlakyFile {
    data: io::Cursor<Vec<u8>>,
    calls: usize,
    fail_at: BTreeSet<usize>,
    interrupt_at: BTreeSet<usize>,
    panic_at: Option<usize>,
}

impl Read for FlakyFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.panic_at == Some(self.calls) {
            panic!("the disk caught fire");
        }
        if self.interrupt_at.contains(&self.calls) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        if self.fail_at.contains(&self.calls) {
            let kind = [
                io::ErrorKind::Other,
                io::ErrorKind::TimedOut,
                io::ErrorKind::BrokenPipe,
            ][self.calls % 3];
            return Err(kind.into());
        }
        let n = buf.len().min(1000);
        self.data.read(&mut buf[..n])
    }
}

/// "a failed read is returned once; reading again retries" (and `Interrupted` is retried
/// without being reported): as many errors as failures, every byte once.
async fn blocking_reader_errors_mid_stream<R: Runtime>(rt: Clocked<R>) {
    for seed in 0..4u64 {
        let mut rng = Rng::new(seed + 70);
        let data = noise(50_000, seed);
        // 50 reads of data at most 1000 bytes each, plus the failed ones: keep them below 50.
        let fail_at: BTreeSet<usize> = (0..8).map(|_| 2 + to_usize(rng.below(45))).collect();
        let interrupt_at: BTreeSet<usize> = (0..8)
            .map(|_| 2 + to_usize(rng.below(45)))
            .filter(|c| !fail_at.contains(c))
            .collect();
        let failures = fail_at.len();
        let file = FlakyFile {
            data: io::Cursor::new(data.clone()),
            calls: 0,
            fail_at,
            interrupt_at,
            panic_at: None,
        };
        let mut reader = BlockingReader::new(rt.clone(), file, 4096).unwrap();
        let (mut got, mut errors, mut buf) = (Vec::new(), 0, vec![0u8; 700]);
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => {
                    assert_ne!(e.kind(), io::ErrorKind::Interrupted, "seed {seed}");
                    errors += 1;
                }
            }
        }
        assert!(
            got == data,
            "seed {seed}: bytes lost or repeated around the errors"
        );
        assert_eq!(errors, failures, "seed {seed}: each failure returned once");
    }
}

#[test]
fn blocking_reader_errors_mid_stream_are_returned_once_and_retried_on_every_runtime() {
    on_every_runtime!(blocking_reader_errors_mid_stream);
}

/// "A read that panicked … loses the reader: that read and every later one fail" — on every
/// runtime, never an end of file and never a panic in the consumer.
async fn blocking_reader_after_a_panic<R: Runtime>(rt: Clocked<R>) {
    let data = noise(20_000, 9);
    let file = FlakyFile {
        data: io::Cursor::new(data.clone()),
        calls: 0,
        fail_at: BTreeSet::new(),
        interrupt_at: BTreeSet::new(),
        panic_at: Some(4),
    };
    let mut reader = BlockingReader::new(rt.clone(), file, 1000).unwrap();
    let (mut got, mut buf) = (Vec::new(), vec![0u8; 300]);
    let first_error = loop {
        match reader.read(&mut buf).await {
            Ok(0) => panic!(
                "a lost reader read as end of file after {} bytes",
                got.len()
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert!(
        got.len() <= 3000,
        "bytes past the panicked read: {}",
        got.len()
    );
    assert_eq!(got, data[..got.len()], "the bytes before it are intact");
    for _ in 0..4 {
        assert!(
            reader.read(&mut buf).await.is_err(),
            "a read after the panic succeeded (first error: {first_error})"
        );
    }
}

#[test]
fn blocking_reader_after_a_panicking_read_fails_for_good_on_every_runtime() {
    on_every_runtime!(blocking_reader_after_a_panic);
}

/// A reader whose first read reports that it started, then blocks until released; its drop is
/// reported too.
struct Gated {
    started: Option<futures_channel::oneshot::Sender<()>>,
    gate: std::sync::mpsc::Receiver<()>,
    dropped: Option<futures_channel::oneshot::Sender<()>>,
}

impl Read for Gated {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        if let Some(started) = self.started.take() {
            let _ = started.send(());
        }
        let _ = self.gate.recv();
        Ok(0)
    }
}

impl Drop for Gated {
    fn drop(&mut self) {
        if let Some(dropped) = self.dropped.take() {
            let _ = dropped.send(());
        }
    }
}

/// "`new` starts the first read at once" (with no poll at all) and "dropping the reader
/// detaches an in-flight read (it finishes on its blocking thread and is discarded)": the
/// reader is dropped only once its read returns.
async fn blocking_reader_first_read_and_detach<R: Runtime>(rt: Clocked<R>) {
    let (started_tx, started_rx) = futures_channel::oneshot::channel();
    let (dropped_tx, mut dropped_rx) = futures_channel::oneshot::channel();
    let (gate_tx, gate_rx) = std::sync::mpsc::channel();
    let reader = BlockingReader::new(
        rt.clone(),
        Gated {
            started: Some(started_tx),
            gate: gate_rx,
            dropped: Some(dropped_tx),
        },
        64,
    )
    .unwrap();
    started_rx
        .await
        .expect("the first read started without a poll");
    drop(reader);
    assert_eq!(
        dropped_rx.try_recv(),
        Ok(None),
        "the reader was dropped while its read was still running"
    );
    gate_tx.send(()).unwrap();
    dropped_rx.await.expect("the detached read was discarded");
}

#[test]
fn blocking_reader_starts_at_once_and_detaches_a_dropped_read_on_every_runtime() {
    on_every_runtime!(blocking_reader_first_read_and_detach);
}

/// The user's pipeline: a file → `BlockingReader` → `LineReader` → `generator` (owned items) →
/// `par_map`, consumed in a scope child that a token stops at a seeded instant (or never).
/// The results are an exact, ordered prefix (all of them without a stop), and the file is
/// closed once the stream is gone.
struct ClosingFile {
    file: std::fs::File,
    closed: Option<futures_channel::oneshot::Sender<()>>,
}

impl Read for ClosingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Drop for ClosingFile {
    fn drop(&mut self) {
        if let Some(closed) = self.closed.take() {
            let _ = closed.send(());
        }
    }
}

async fn file_lines_pipeline_in_a_scope<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.log");
    let count = 3000u64;
    std::fs::write(&path, numbered_lines(count)).unwrap();
    for seed in 0..4u64 {
        let mut rng = Rng::new(seed + 500);
        let stop_after = if seed == 0 {
            None
        } else {
            Some(ms(1 + rng.below(300)))
        };
        let (closed_tx, closed_rx) = futures_channel::oneshot::channel();
        let file = ClosingFile {
            file: std::fs::File::open(&path).unwrap(),
            closed: Some(closed_tx),
        };
        let scope = Scope::builder()
            .runtime(rt.clone())
            .build::<(), String>()
            .unwrap();
        let stop = CancellationToken::new();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (prt, mrt, child_stop, sink) = (rt.clone(), rt.clone(), stop.clone(), Arc::clone(&got));
        scope
            .spawn(async move {
                let g = generator(4, move |mut y| async move {
                    let reader = BlockingReader::new(prt, file, 4096).unwrap();
                    let mut lines = LineReader::new(reader, 4096, 64, Overlong::Error).unwrap();
                    while let Some(batch) = lines.next_batch().await.unwrap() {
                        for line in batch.lines() {
                            if !y.yield_(parse_numbered(line)).await {
                                return;
                            }
                        }
                    }
                })
                .unwrap();
                let mapped = g
                    .par_map_on(&mrt.clone(), 3, move |n| {
                        let mrt = mrt.clone();
                        async move {
                            mrt.sleep(ms(n % 4)).await;
                            n * 2
                        }
                    })
                    .unwrap();
                let mut mapped = Box::pin(mapped.take_until(child_stop.cancelled_owned()));
                while let Some(result) = mapped.next().await {
                    sink.lock()
                        .unwrap()
                        .push(result.map_err(|e| e.to_string())?);
                }
                Ok(())
            })
            .await
            .unwrap();
        if let Some(after) = stop_after {
            rt.sleep(after).await;
            stop.cancel("stop reading");
        }
        let report = scope.join().await;
        assert_eq!(report.succeeded, 1, "seed {seed}: {report:?}");
        let got = got.lock().unwrap().clone();
        let expected: Vec<u64> = (0..to_u64(got.len())).map(|n| n * 2).collect();
        assert_eq!(got, expected, "seed {seed}: not an exact prefix");
        if stop_after.is_none() {
            assert_eq!(to_u64(got.len()), count, "all lines without a stop");
        }
        closed_rx
            .timeout_on(&rt, Duration::from_secs(3600))
            .await
            .expect("the file was never closed")
            .unwrap();
    }
}

#[test]
fn file_lines_through_a_generator_and_par_map_in_a_scope_on_every_runtime() {
    on_every_runtime!(file_lines_pipeline_in_a_scope);
}

// =============================================================================================
// DirWatch
// =============================================================================================

/// "WatchError::Config for a zero debounce or one beyond u64 nanoseconds, WatchError::Notify
/// when the OS watcher cannot be set up".
#[test]
fn watch_config_extremes_are_typed_errors() {
    common::on_tokio_current_thread(|rt| async move {
        let dir = tempfile::tempdir().unwrap();
        let largest = Duration::from_nanos(u64::MAX);
        for bad in [
            Duration::ZERO,
            largest + Duration::from_nanos(1),
            Duration::MAX,
        ] {
            assert!(
                matches!(
                    watch_dir_on(&rt, dir.path(), bad),
                    Err(WatchError::Config(_))
                ),
                "{bad:?}"
            );
        }
        assert!(watch_dir_on(&rt, dir.path(), largest).is_ok());
        assert!(watch_dir_on(&rt, dir.path(), Duration::from_nanos(1)).is_ok());
        assert!(matches!(
            watch_dir_on(&rt, dir.path().join("missing"), ms(10)),
            Err(WatchError::Notify(_))
        ));
    });
}

/// Batches up to and including the one that names `fence` (written last: inotify reports in
/// order) or the first marked overflowed, each checked: non-empty, sorted, each path once, under `dir`.
async fn batches_until_fence<S>(changes: &mut S, dir: &Path, fence: &str) -> Vec<DirChanges>
where
    S: Stream<Item = Result<DirChanges, WatchError>> + Unpin,
{
    let canonical = dir.canonicalize().unwrap();
    let mut batches = Vec::new();
    loop {
        let batch = changes
            .next()
            .await
            .expect("the watch ended")
            .expect("a watch error");
        assert!(!batch.paths.is_empty(), "a batch is never empty");
        assert!(
            batch.paths.windows(2).all(|w| w[0] < w[1]),
            "sorted, each once: {:?}",
            batch.paths
        );
        for p in &batch.paths {
            assert!(
                p.starts_with(dir) || p.starts_with(&canonical),
                "{p:?} is not under {dir:?}"
            );
        }
        // After an overflow the fence itself may be among the dropped events.
        let done = batch.overflowed
            || batch
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| n == fence));
        batches.push(batch);
        if done {
            return batches;
        }
    }
}

fn names(batches: &[DirChanges]) -> BTreeSet<String> {
    batches
        .iter()
        .flat_map(|b| &b.paths)
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

/// Files created, renamed and removed quickly: every path that changed is reported (a removed
/// file too: "created, modified, removed, renamed"), in batches that are sorted and
/// deduplicated.
async fn watch_quick_changes<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let mut changes = watch_dir_on(&rt, dir.path(), ms(20)).unwrap();
    for n in 0..20 {
        std::fs::write(dir.path().join(format!("f{n}")), b"x").unwrap();
    }
    for n in 0..10 {
        std::fs::remove_file(dir.path().join(format!("f{n}"))).unwrap();
    }
    for n in 10..15 {
        std::fs::rename(
            dir.path().join(format!("f{n}")),
            dir.path().join(format!("r{n}")),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("fence"), b"").unwrap();
    let batches = batches_until_fence(&mut changes, dir.path(), "fence").await;
    let seen = names(&batches);
    if !batches.iter().any(|b| b.overflowed) {
        for n in 0..20 {
            assert!(
                seen.contains(&format!("f{n}")),
                "f{n} missing from {seen:?}"
            );
        }
        for n in 10..15 {
            assert!(
                seen.contains(&format!("r{n}")),
                "r{n} missing from {seen:?}"
            );
        }
    }
}

#[test]
fn watch_reports_files_created_renamed_and_removed_quickly_on_every_runtime() {
    on_every_runtime!(watch_quick_changes);
}

/// More changes than the raw-event queue holds, made while nobody polls: "past either, the
/// rest are dropped and the batch is marked `overflowed`" — a change is either reported or
/// covered by an overflow mark, never silently lost.
async fn watch_flood<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let mut changes = watch_dir_on(&rt, dir.path(), ms(5)).unwrap();
    for n in 0..3000 {
        std::fs::write(dir.path().join(format!("flood{n}")), b"x").unwrap();
    }
    std::fs::write(dir.path().join("fence"), b"").unwrap();
    let batches = batches_until_fence(&mut changes, dir.path(), "fence").await;
    let seen = names(&batches);
    let overflowed = batches.iter().any(|b| b.overflowed);
    let missing = (0..3000)
        .filter(|n| !seen.contains(&format!("flood{n}")))
        .count();
    assert!(
        overflowed || missing == 0,
        "{missing} changes lost without an overflow mark"
    );
}

#[test]
fn watch_flood_is_reported_or_flagged_as_overflowed_on_every_runtime() {
    on_every_runtime!(watch_flood);
}

/// "Watches `dir` (recursively)": a change three directories down is reported with its path.
async fn watch_nested<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("a").join("b").join("c");
    std::fs::create_dir_all(&deep).unwrap();
    let mut changes = watch_dir_on(&rt, dir.path(), ms(10)).unwrap();
    std::fs::write(deep.join("deep.txt"), b"down here").unwrap();
    std::fs::write(deep.join("fence"), b"").unwrap();
    let batches = batches_until_fence(&mut changes, dir.path(), "fence").await;
    assert!(
        batches
            .iter()
            .flat_map(|b| &b.paths)
            .any(|p| p.ends_with("a/b/c/deep.txt")),
        "{batches:?}"
    );
}

#[test]
fn watch_reports_changes_in_nested_directories_on_every_runtime() {
    on_every_runtime!(watch_nested);
}

/// "after the first change, everything within `debounce` is gathered into one DirChanges": in
/// virtual time (which stands still while the OS is awaited: there is no timer before the
/// first change), every batch arrives exactly one debounce after it was asked for.
async fn watch_debounce_window<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let debounce = ms(40);
    let mut changes = watch_dir_on(&rt, dir.path(), debounce).unwrap();
    for round in 0..4 {
        std::fs::write(dir.path().join(format!("w{round}")), b"x").unwrap();
        let asked = rt.now();
        let batch = changes.next().await.unwrap().unwrap();
        assert!(!batch.paths.is_empty());
        assert_eq!(rt.now() - asked, debounce, "round {round}: {batch:?}");
    }
}

#[test]
fn watch_batches_close_one_debounce_after_the_first_change_on_every_runtime() {
    on_every_runtime!(watch_debounce_window);
}

/// A watch in a scope child, stopped with `take_until` on the scope's token: the child ends
/// and the scope closes, with or without changes pending.
async fn watch_in_a_cancelled_scope<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let scope = Scope::builder()
        .runtime(rt.clone())
        .build::<usize, String>()
        .unwrap();
    let token = scope.token();
    let changes = watch_dir_on(&rt, dir.path(), ms(10)).unwrap();
    let (first_tx, first_rx) = futures_channel::oneshot::channel();
    scope
        .spawn(async move {
            let mut changes = Box::pin(changes.take_until(token.cancelled_owned()));
            let mut batches = 0;
            let mut first_tx = Some(first_tx);
            while let Some(batch) = changes.next().await {
                batch.map_err(|e| e.to_string())?;
                batches += 1;
                if let Some(tx) = first_tx.take() {
                    let _ = tx.send(());
                }
            }
            Ok(batches)
        })
        .await
        .unwrap();
    std::fs::write(dir.path().join("one"), b"1").unwrap();
    first_rx.await.unwrap();
    scope.cancel("stop watching");
    // Changes after the stop do not keep the child alive.
    std::fs::write(dir.path().join("two"), b"2").unwrap();
    let report = scope.join().await;
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert!(
        matches!(report.children[0].exit, Exit::Ok(n) if n >= 1),
        "{report:?}"
    );
}

#[test]
fn watch_in_a_cancelled_scope_child_ends_on_every_runtime() {
    on_every_runtime!(watch_in_a_cancelled_scope);
}
