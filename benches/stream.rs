//! Stream operators and line reading, per item or per byte (criterion `Throughput`).
//!
//! * `batch`: 100k `u64` from `stream::iter` into batches of 64 with a 10 ms max wait (never
//!   reached: every item is ready at once), all batches consumed. Tidewall `batch` vs
//!   tokio-stream `chunks_timeout` vs futures-batch `chunks_timeout`, with futures `chunks(64)`
//!   (no timer) as the baseline. Tidewall and tokio-stream create a tokio `Sleep` per batch,
//!   polled only when the source is pending; futures-batch's futures-timer `Delay` registers
//!   with (and wakes) futures-timer's global helper thread on every batch. Target: tidewall
//!   ≤ 20 ns/item.
//! * `par_map`: 10k items at limit 64, each future trivial (`trivial/*`) or yielding to the
//!   scheduler once (`yield_once/*`). Tidewall `par_map` (ordered) and `par_map_unordered`
//!   spawn a task per item, so work progresses while the consumer is busy; futures `buffered`
//!   / `buffer_unordered` run the futures inside the consuming task. Tidewall `par_map_local`
//!   is futures' `buffered` behind an enum (the same code, not a competitor): its row
//!   (`par_map_local_is_buffered`) shows how far two runs of the same code land apart in
//!   this run, not a difference between the libraries.
//! * `lines`: a generated ~64 MiB access log (~50-byte lines) in memory, counting lines and
//!   summing their lengths. Tidewall `LineReader` (1 MiB buffer, 64 KiB max line, borrowed
//!   `&[u8]` lines) vs futures `AsyncBufReadExt::lines()` over a 1 MiB `BufReader` (a `String`
//!   per line, UTF-8 checked) vs a raw loop of 1 MiB `read`s + `memchr_iter` (the ceiling).
//!   In-memory readers are always ready, so each run is driven by `now_or_never`.
//!
//! `batch` and `par_map` run with criterion's `to_async` on a current-thread tokio runtime
//! (time enabled). Every variant's result is asserted once before timing.
//!
//! Run: `cargo bench -p tidewall-benches --bench stream`.

use std::future::Future;
use std::hint::black_box;
use std::io::Write as _;
use std::time::Duration;

use criterion::{SamplingMode, Throughput, criterion_group, criterion_main};
use futures_util::future::LocalBoxFuture;
use futures_util::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use futures_util::{FutureExt, Stream, StreamExt, stream};
use tidewall::stream::{LineReader, Overlong, StreamOps};

const ITEMS: u64 = 100_000;
const BATCH: usize = 64;
const WAIT: Duration = Duration::from_millis(10);
const PAR_ITEMS: u64 = 10_000;
const LIMIT: usize = 64;
const LOG_BYTES: usize = 64 << 20;
const READ_BUF: usize = 1 << 20;

/// (batches, items): more batches than `ITEMS / 64` rounded up would mean the timer fired.
async fn count_batches(batches: impl Stream<Item = Vec<u64>>) -> (usize, usize) {
    batches
        .fold((0, 0), |(n, items), batch| async move {
            (n + 1, items + batch.len())
        })
        .await
}

/// A batching peer: runs the whole stream, returns (batches, items).
type BatchPeer = fn() -> LocalBoxFuture<'static, (usize, usize)>;
/// A line reader: counts (lines, bytes of line content) of a log.
type LineCounter = fn(&[u8]) -> (usize, usize);

fn numbers() -> impl Stream<Item = u64> {
    stream::iter(0..ITEMS)
}

async fn trivial(n: u64) -> u64 {
    black_box(n * 2)
}

async fn yield_once(n: u64) -> u64 {
    tokio::task::yield_now().await;
    black_box(n * 2)
}

#[derive(Clone, Copy)]
enum Par {
    TidewallOrdered,
    TidewallUnordered,
    TidewallLocal,
    FuturesBuffered,
    FuturesBufferUnordered,
}

const PAR_PEERS: [(&str, Par); 5] = [
    ("tidewall_par_map", Par::TidewallOrdered),
    ("tidewall_par_map_unordered", Par::TidewallUnordered),
    ("par_map_local_is_buffered", Par::TidewallLocal),
    ("futures_buffered", Par::FuturesBuffered),
    ("futures_buffer_unordered", Par::FuturesBufferUnordered),
];

async fn sum(results: impl Stream<Item = u64>) -> u64 {
    results
        .fold(0u64, |acc, n| async move { acc.wrapping_add(n) })
        .await
}

async fn par_run<F, Fut>(peer: Par, f: F) -> u64
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = u64> + Send + 'static,
{
    let source = stream::iter(0..PAR_ITEMS);
    match peer {
        Par::TidewallOrdered => sum(source.par_map(LIMIT, f).unwrap().map(Result::unwrap)).await,
        Par::TidewallUnordered => {
            sum(source
                .par_map_unordered(LIMIT, f)
                .unwrap()
                .map(Result::unwrap))
            .await
        }
        Par::TidewallLocal => sum(source.par_map_local(LIMIT, f).unwrap()).await,
        Par::FuturesBuffered => sum(source.map(f).buffered(LIMIT)).await,
        Par::FuturesBufferUnordered => sum(source.map(f).buffer_unordered(LIMIT)).await,
    }
}

/// An access log of at least `LOG_BYTES`, with its line count and summed line lengths.
fn make_log() -> (Vec<u8>, (usize, usize)) {
    const STATUS: [u16; 7] = [200, 200, 200, 201, 304, 404, 500];
    let mut data = Vec::with_capacity(LOG_BYTES + 128);
    let (mut lines, mut bytes) = (0, 0);
    while data.len() < LOG_BYTES {
        let (i, before) = (lines, data.len());
        let secs = i % 86_400;
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        let (item, size) = (i * 7919 % 100_000, i * 31 % 65_536);
        let status = STATUS[i % STATUS.len()];
        writeln!(
            data,
            "2026-11-25T{h:02}:{m:02}:{s:02}Z GET /api/items/{item} {status} {size}"
        )
        .unwrap();
        lines += 1;
        bytes += data.len() - before - 1;
    }
    (data, (lines, bytes))
}

async fn lines_tidewall(data: &[u8]) -> (usize, usize) {
    let mut reader = LineReader::new(data, READ_BUF, 64 << 10, Overlong::Error).unwrap();
    let (mut lines, mut bytes) = (0, 0);
    while let Some(batch) = reader.next_batch().await.unwrap() {
        for line in batch.lines() {
            lines += 1;
            bytes += line.len();
        }
    }
    (lines, bytes)
}

async fn lines_futures(data: &[u8]) -> (usize, usize) {
    let mut reader = BufReader::with_capacity(READ_BUF, data).lines();
    let (mut lines, mut bytes) = (0, 0);
    while let Some(line) = reader.next().await {
        lines += 1;
        bytes += line.unwrap().len();
    }
    (lines, bytes)
}

async fn lines_raw(mut data: &[u8]) -> (usize, usize) {
    let mut buf = vec![0u8; READ_BUF];
    let (mut newlines, mut total) = (0, 0);
    loop {
        let n = data.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        newlines += memchr::memchr_iter(b'\n', &buf[..n]).count();
        total += n;
    }
    (newlines, total - newlines)
}

fn stream_ops(c: &mut criterion::Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // One boxed future per 100k items: negligible. Fully qualified `chunks_timeout`:
    // tokio-stream's and futures-batch's traits share the method name.
    let batch_peers: [(&str, BatchPeer); 4] = [
        ("tidewall_batch", || {
            count_batches(numbers().batch(BATCH, WAIT).unwrap()).boxed_local()
        }),
        ("tokio_stream_chunks_timeout", || {
            let batches = tokio_stream::StreamExt::chunks_timeout(numbers(), BATCH, WAIT);
            count_batches(batches).boxed_local()
        }),
        ("futures_batch_chunks_timeout", || {
            let batches =
                futures_batch::ChunksTimeoutStreamExt::chunks_timeout(numbers(), BATCH, WAIT);
            count_batches(batches).boxed_local()
        }),
        ("futures_chunks_baseline", || {
            count_batches(numbers().chunks(BATCH)).boxed_local()
        }),
    ];
    let items = usize::try_from(ITEMS).unwrap();
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(ITEMS));
    for (name, run) in batch_peers {
        let got = rt.block_on(run());
        assert_eq!(got, (items.div_ceil(BATCH), items), "{name}: wrong batches");
        group.bench_function(name, |b| b.to_async(&rt).iter(run));
    }
    group.finish();

    let expected: u64 = (0..PAR_ITEMS).map(|n| n * 2).sum();
    let mut group = c.benchmark_group("par_map");
    group.throughput(Throughput::Elements(PAR_ITEMS));
    for (name, peer) in PAR_PEERS {
        assert_eq!(
            rt.block_on(par_run(peer, trivial)),
            expected,
            "trivial/{name}"
        );
        assert_eq!(
            rt.block_on(par_run(peer, yield_once)),
            expected,
            "yield_once/{name}"
        );
        group.bench_function(format!("trivial/{name}"), |b| {
            b.to_async(&rt).iter(|| par_run(peer, trivial))
        });
        group.bench_function(format!("yield_once/{name}"), |b| {
            b.to_async(&rt).iter(|| par_run(peer, yield_once))
        });
    }
    group.finish();

    let (log, expected) = make_log();
    let log = log.as_slice();
    let readers: [(&str, LineCounter); 3] = [
        ("tidewall_line_reader", |d| {
            lines_tidewall(d).now_or_never().unwrap()
        }),
        ("futures_lines", |d| {
            lines_futures(d).now_or_never().unwrap()
        }),
        ("raw_read_memchr", |d| lines_raw(d).now_or_never().unwrap()),
    ];
    let mut group = c.benchmark_group("lines");
    group.throughput(Throughput::Bytes(u64::try_from(log.len()).unwrap()));
    // ~64 MiB per iteration: a few long iterations per sample.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    for (name, read) in readers {
        assert_eq!(read(log), expected, "{name}: wrong (lines, bytes)");
        group.bench_function(name, |b| b.iter(|| read(log)));
    }
    group.finish();

    lines_from_a_file(c, log, expected);
}

/// The same log, 4 times over (256 MiB), read from a file in the page cache: Tidewall's
/// `BlockingReader` + `LineReader` on a 2-worker tokio runtime, tokio's own `fs::File` +
/// `BufReader::lines()` (a `String` per line), and a plain blocking read loop with `memchr`
/// on one thread (the ceiling).
fn lines_from_a_file(c: &mut criterion::Criterion, log: &[u8], (lines, bytes): (usize, usize)) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.log");
    let mut file = std::fs::File::create(&path).unwrap();
    for _ in 0..4 {
        std::io::Write::write_all(&mut file, log).unwrap();
    }
    file.sync_all().unwrap();
    drop(file);
    let expected = (4 * lines, 4 * bytes);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let path = path.as_path();
    let tidewall = || {
        rt.block_on(async {
            let file = std::fs::File::open(path).unwrap();
            let reader =
                tidewall::stream::BlockingReader::new(tidewall::rt::Tokio, file, 1 << 20).unwrap();
            let mut lines = LineReader::new(reader, 1 << 20, 64 * 1024, Overlong::Error).unwrap();
            let (mut count, mut total) = (0, 0);
            while let Some(batch) = lines.next_batch().await.unwrap() {
                for line in batch.lines() {
                    count += 1;
                    total += line.len();
                }
            }
            (count, total)
        })
    };
    let tokio_lines = || {
        rt.block_on(async {
            use tokio::io::AsyncBufReadExt;
            let file = tokio::fs::File::open(path).await.unwrap();
            let mut lines = tokio::io::BufReader::with_capacity(1 << 20, file).lines();
            let (mut count, mut total) = (0, 0);
            while let Some(line) = lines.next_line().await.unwrap() {
                count += 1;
                total += line.len();
            }
            (count, total)
        })
    };
    let raw = || {
        let mut file = std::fs::File::open(path).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let (mut count, mut read_total) = (0, 0);
        loop {
            let n = std::io::Read::read(&mut file, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            count += memchr::memchr_iter(b'\n', &buf[..n]).count();
            read_total += n;
        }
        (count, read_total - count)
    };
    let mut group = c.benchmark_group("lines_file");
    group.throughput(Throughput::Bytes(4 * u64::try_from(log.len()).unwrap()));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    assert_eq!(tidewall(), expected, "tidewall: wrong (lines, bytes)");
    assert_eq!(tokio_lines(), expected, "tokio: wrong (lines, bytes)");
    assert_eq!(raw(), expected, "raw: wrong (lines, bytes)");
    group.bench_function("tidewall_blocking_reader", |b| b.iter(tidewall));
    group.bench_function("tokio_fs_lines", |b| b.iter(tokio_lines));
    group.bench_function("raw_std_read_memchr", |b| b.iter(raw));
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! { name = benches; config = tidewall_benches::criterion(); targets = stream_ops }
}
criterion_main!(group::benches);
