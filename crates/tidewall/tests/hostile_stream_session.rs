//! Hostile black-box tests of `tidewall::stream` and `tidewall::fs`, written from the rustdoc
//! alone (this session: `follow_on`'s start point, `Interval`'s `MissedTicks::Delay` and
//! jitter under early polls, `write_atomic` with names at the file-system limit, `DirWatch`'s
//! bounded queue), then backpressure, line limits, rotation and truncation at every step of a
//! follow, long idle gaps in virtual time and `next()` futures dropped at seeded random points.
//!
//! Every assertion quotes the sentence of the docs it tests.

mod common;
#[path = "common/spawn_adapters.rs"]
mod spawn_adapters;

use std::future::Future;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::{Either, select};
use futures_util::io::{AsyncRead, AsyncReadExt as _};
use futures_util::task::{ArcWake, noop_waker_ref};
use futures_util::{Stream, StreamExt as _, stream};
use spawn_adapters::{Counting, PanicAt};
use tidewall::rt::{Clock, Runtime, Tokio};
use tidewall::stream::{
    BlockingReader, Follow, LineReader, LinesError, MissedTicks, Overlong, StreamOps, follow_on,
    interval_on, watch_dir_on,
};
use tidewall::testing::FakeClock;
use tidewall_core::rng::SplitMix64;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn cx() -> Context<'static> {
    Context::from_waker(noop_waker_ref())
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("fits")
}

const DAY: Duration = Duration::from_secs(86_400);
const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// `f`, or `None` if `d` of `rt`'s time passes first (the future is then dropped).
async fn within<R: Clock, F: Future>(rt: &R, d: Duration, f: F) -> Option<F::Output> {
    let f = std::pin::pin!(f);
    let s = std::pin::pin!(rt.sleep(d));
    match select(f, s).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

/// A waker that records whether it was woken.
#[derive(Default)]
struct Flag(AtomicBool);

impl ArcWake for Flag {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.store(true, SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Allocation counting (used only by the child process of the constant-memory test).
// ---------------------------------------------------------------------------------------------

struct Tracking;

static MEASURING: AtomicBool = AtomicBool::new(false);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn layout_size(layout: std::alloc::Layout) -> isize {
    isize::try_from(layout.size()).unwrap_or(isize::MAX)
}

// SAFETY: forwards to the system allocator unchanged; only keeps counters.
unsafe impl std::alloc::GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if MEASURING.load(SeqCst) {
            let now = LIVE.fetch_add(layout_size(layout), SeqCst) + layout_size(layout);
            PEAK.fetch_max(now, SeqCst);
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if MEASURING.load(SeqCst) {
            LIVE.fetch_sub(layout_size(layout), SeqCst);
        }
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

// =============================================================================================
// follow_on: the start point is fixed when it returns.
// =============================================================================================

fn append(path: &Path, bytes: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
}

/// The next item of `f` (waiting at most `limit` of `rt`'s time), which must be a line.
async fn line<R: Runtime>(rt: &R, f: &mut Follow<R>, limit: Duration) -> Vec<u8> {
    match within(rt, limit, f.next()).await {
        Some(Some(Ok(l))) => l,
        Some(Some(Err(e))) => panic!("an error instead of a line: {e}"),
        Some(None) => panic!("\"The stream never ends\", yet it ended"),
        None => panic!("no line within {limit:?}"),
    }
}

/// Every line `f` delivers until it stays quiet for several periods.
async fn drain<R: Runtime>(rt: &R, f: &mut Follow<R>, period: Duration) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    loop {
        match within(rt, period * 6 + ms(7), f.next()).await {
            Some(Some(Ok(l))) => got.push(l),
            Some(Some(Err(e))) => panic!("an error item: {e} (after {got:?})"),
            Some(None) => panic!("\"The stream never ends\", yet it ended"),
            None => return got,
        }
    }
}

async fn follow_starts_when_built<R: Runtime>(rt: R) {
    let p = ms(100);
    let dir = tempfile::tempdir().unwrap();

    // 1. Appends right after `follow_on` returns, before the first poll.
    let path = dir.path().join("a.log");
    std::fs::write(&path, "old 1\nold 2\n").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    append(&path, b"new 1\nnew 2\n");
    // "It starts where the file is when the follower is built [...] at its end [...] So lines
    // appended as soon as follow_on returns are delivered"
    assert_eq!(line(&rt, &mut f, p * 20).await, b"new 1");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"new 2");
    assert!(drain(&rt, &mut f, p).await.is_empty());

    // 2. A file that did not exist when it was built, created right after.
    let path = dir.path().join("b.log");
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    std::fs::write(&path, "first\nsecond\n").unwrap();
    // "A file that does not exist yet [...] is read from its start when a check first opens it."
    assert_eq!(line(&rt, &mut f, p * 20).await, b"first");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"second");

    // 3. Rotated right after it was built (a last line first), before the first poll.
    let path = dir.path().join("c.log");
    std::fs::write(&path, "before\n").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    append(&path, b"last words\n");
    std::fs::rename(&path, dir.path().join("c.log.1")).unwrap();
    std::fs::write(&path, "fresh\n").unwrap();
    // "the guarantees above hold from then on" / "every byte written to the old file before
    // its rename is read before the old file is let go; then the file now at the path is read
    // from its start."
    assert_eq!(line(&rt, &mut f, p * 20).await, b"last words");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"fresh");
    assert!(drain(&rt, &mut f, p).await.is_empty());

    // 4. Truncated in place right after it was built, shorter and then longer than before.
    let path = dir.path().join("d.log");
    std::fs::write(&path, "0123456789 old contents\n").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    std::fs::write(&path, "short\n").unwrap();
    // "Truncation in place [...] a check notices it when the file is shorter than what was
    // read [...]; the file is then read again from its start."
    assert_eq!(line(&rt, &mut f, p * 20).await, b"short");
    let path = dir.path().join("e.log");
    std::fs::write(&path, "0123456789 old contents\n").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    std::fs::write(&path, "a longer replacement, other bytes\n").unwrap();
    // "[...] or when the (up to) 64 bytes before that point are no longer the ones read there"
    // (building reads "from the end, a read of at most 64 bytes").
    assert_eq!(
        line(&rt, &mut f, p * 20).await,
        b"a longer replacement, other bytes"
    );
}

#[test]
fn follow_lines_appended_or_files_replaced_right_after_follow_on_returns_are_delivered() {
    on_every_runtime!(follow_starts_when_built);
}

#[test]
fn follow_built_outside_any_runtime_starts_there_and_is_polled_inside_one() {
    // "Building it needs no runtime (it spawns nothing): it may be built outside one and polled
    // inside one." / "Needs no runtime until polled."
    let dir = tempfile::tempdir().unwrap();
    let p = ms(50);
    let path = dir.path().join("app.log");
    std::fs::write(&path, "before\n").unwrap();
    // On a plain thread with no runtime anywhere near it.
    let built = std::thread::spawn({
        let path = path.clone();
        move || follow_on(&Tokio, &path, p, 64, false)
    })
    .join()
    .expect("building panicked outside a runtime")
    .expect("valid config");
    append(&path, b"after build\n");
    let smol_path = dir.path().join("smol.log");
    std::fs::write(&smol_path, "before\n").unwrap();
    let smol = tidewall::rt::SmolRuntime::single_threaded();
    let mut on_smol = follow_on(&smol.handle(), &smol_path, p, 64, false).unwrap();
    append(&smol_path, b"after build\n");
    let mut on_async_std = follow_on(&tidewall::rt::AsyncStd, &smol_path, p, 64, false).unwrap();
    append(&smol_path, b"later\n");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut f = built;
    // The timeouts below bound a hang (the line is due within a 50 ms period), no more.
    let first = runtime.block_on(async { tokio::time::timeout(ms(30_000), f.next()).await });
    // "So lines appended as soon as follow_on returns are delivered"
    assert_eq!(first.unwrap().unwrap().unwrap(), b"after build");
    let first = smol.block_on(async {
        let timeout = async {
            smol::Timer::after(ms(30_000)).await;
            None
        };
        futures_util::future::select(
            std::pin::pin!(async { on_smol.next().await }),
            std::pin::pin!(timeout),
        )
        .await
        .factor_first()
        .0
    });
    assert_eq!(first.unwrap().unwrap(), b"after build");
    let first = async_std::task::block_on(async {
        async_std::future::timeout(ms(30_000), on_async_std.next()).await
    });
    assert_eq!(first.unwrap().unwrap().unwrap(), b"later");
}

async fn follow_mid_line_start<R: Runtime>(rt: R) {
    let p = ms(100);
    let dir = tempfile::tempdir().unwrap();

    // A short partial line at the end.
    let path = dir.path().join("a.log");
    std::fs::write(&path, "done\npart").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    append(&path, b"ial\nnext\n");
    // "Started at an end inside a line (the file does not end with a newline), the rest of
    // that line is skipped: the first line delivered is the first that starts after the
    // follower's start."
    assert_eq!(line(&rt, &mut f, p * 20).await, b"next");

    // A partial line far longer than the 64 bytes read back from the end.
    let path = dir.path().join("b.log");
    let mut data = b"done\n".to_vec();
    data.extend(std::iter::repeat_n(b'p', 1000));
    std::fs::write(&path, &data).unwrap();
    let mut f = follow_on(&rt, &path, p, 4096, false).unwrap();
    append(&path, b"rest\nnext\n");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"next");

    // A file that ends with a newline: nothing to skip.
    let path = dir.path().join("c.log");
    std::fs::write(&path, "done\n").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    append(&path, b"first after start\n");
    // "the first line delivered is the first that starts after the follower's start"
    assert_eq!(line(&rt, &mut f, p * 20).await, b"first after start");

    // An empty file: its end is not inside a line.
    let path = dir.path().join("d.log");
    std::fs::write(&path, "").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    append(&path, b"first\n");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"first");

    // A file that is only a partial line.
    let path = dir.path().join("e.log");
    std::fs::write(&path, "no newline at all").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    append(&path, b" still the same line\nnext\n");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"next");

    // Polled once before the rest arrives: the skip survives an idle check.
    let path = dir.path().join("f.log");
    std::fs::write(&path, "done\npart").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    assert!(drain(&rt, &mut f, p).await.is_empty());
    append(&path, b"ial, later\nnext\n");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"next");
}

#[test]
fn follow_started_inside_a_line_skips_exactly_the_rest_of_that_line() {
    on_every_runtime!(follow_mid_line_start);
}

async fn follow_mid_line_then_replaced<R: Runtime>(rt: R) {
    let p = ms(100);
    let dir = tempfile::tempdir().unwrap();

    // Rotation before the skipped line's newline came.
    let path = dir.path().join("a.log");
    std::fs::write(&path, "done\npart").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    assert!(drain(&rt, &mut f, p).await.is_empty());
    std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
    std::fs::write(&path, "fresh\nsecond\n").unwrap();
    // "then the file now at the path is read from its start" / "a partial last line left in a
    // file that was rotated or truncated is dropped": the new file's first line is whole and
    // starts after the follower's start.
    assert_eq!(line(&rt, &mut f, p * 20).await, b"fresh");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"second");

    // Truncation in place before the skipped line's newline came.
    let path = dir.path().join("b.log");
    std::fs::write(&path, "done\npart").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    assert!(drain(&rt, &mut f, p).await.is_empty());
    std::fs::write(&path, "new\n").unwrap();
    // "the file is then read again from its start"
    assert_eq!(line(&rt, &mut f, p * 20).await, b"new");

    // Truncation in place, rewritten longer (noticed by the bytes before the start, not by the
    // size).
    let path = dir.path().join("d.log");
    std::fs::write(&path, "done\npart").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    assert!(drain(&rt, &mut f, p).await.is_empty());
    std::fs::write(&path, "a longer first line\nsecond\n").unwrap();
    // "or when the (up to) 64 bytes before that point are no longer the ones read there; the
    // file is then read again from its start."
    assert_eq!(line(&rt, &mut f, p * 20).await, b"a longer first line");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"second");

    // The rest of the skipped line and a line more reach the old file before its rename.
    let path = dir.path().join("e.log");
    std::fs::write(&path, "done\npart").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    assert!(drain(&rt, &mut f, p).await.is_empty());
    append(&path, b"ial\nkept\n");
    std::fs::rename(&path, dir.path().join("e.log.1")).unwrap();
    std::fs::write(&path, "fresh\n").unwrap();
    // "every byte written to the old file before its rename is read before the old file is
    // let go" / "the first line delivered is the first that starts after the follower's start"
    assert_eq!(line(&rt, &mut f, p * 20).await, b"kept");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"fresh");

    // The same, with no poll between the build and the rotation.
    let path = dir.path().join("c.log");
    std::fs::write(&path, "done\npart").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    std::fs::rename(&path, dir.path().join("c.log.1")).unwrap();
    std::fs::write(&path, "fresh\n").unwrap();
    assert_eq!(line(&rt, &mut f, p * 20).await, b"fresh");
}

#[test]
fn follow_started_inside_a_line_does_not_skip_the_first_line_of_a_file_that_replaced_it() {
    on_every_runtime!(follow_mid_line_then_replaced);
}

#[tokio::test(start_paused = true)]
async fn follow_started_inside_a_line_skips_it_even_when_it_grows_past_max_line() {
    let p = ms(100);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "ok\nthe start of a line").unwrap();
    let mut f = follow_on(&Tokio, &path, p, 16, false).unwrap();
    append(&path, b" that goes on well past sixteen bytes\nnext\n");
    // "the rest of that line is skipped: the first line delivered is the first that starts
    // after the follower's start" (an overlong line "is delivered as an InvalidData error": a
    // line that began before the start is not delivered at all, not even as an error).
    let first = tokio::time::timeout(p * 20, f.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first.map_err(|e| e.to_string()).unwrap(),
        b"next",
        "the skipped line came out as an item"
    );
}

#[test]
fn follow_building_on_a_fifo_does_not_block() {
    // "A file that does not exist yet, is not a regular file (a FIFO is not opened there: that
    // could block) [...] is read from its start when a check first opens it."
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn({
        let fifo = fifo.clone();
        move || {
            let _ = tx.send(follow_on(&Tokio, &fifo, ms(50), 64, false).is_ok());
        }
    });
    // Blocked on a FIFO, the build would never return: 30 s bounds that hang, no more.
    let built = rx.recv_timeout(Duration::from_secs(30));
    if built.is_err() {
        // Unblock the stuck open so the thread can end, then fail.
        drop(std::fs::OpenOptions::new().write(true).open(&fifo));
    }
    assert_eq!(built, Ok(true), "follow_on blocked on a FIFO");
}

// =============================================================================================
// follow_on: rotation and truncation at every step, next() dropped at random points.
// =============================================================================================

/// A writer rotating and truncating the file at random steps while the consumer polls in
/// bursts, drops `next()` futures at random points, or does not poll at all. Rotations and
/// truncations happen only when everything written so far was delivered (so no file is
/// replaced twice between checks and no unread line is truncated away): then the docs promise
/// every line, once, in order.
async fn follow_random_script<R: Runtime>(rt: R, seed: u64) {
    let p = ms(40);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let mut rng = SplitMix64::new(seed);
    let mut id = 0u32;
    let mut make = |rng: &mut SplitMix64| {
        id += 1;
        let pad = "x".repeat(to_usize(rng.below_or_equal(20)));
        format!("s{seed}-{id:06}-{pad}").into_bytes()
    };
    let mut written: Vec<Vec<u8>> = Vec::new();
    let from_start = rng.below_or_equal(1) == 0;
    match rng.below_or_equal(2) {
        0 => {} // missing: "A missing file is waited for, and read from its start"
        1 => std::fs::write(&path, "").unwrap(),
        _ => {
            let mut buf = Vec::new();
            for _ in 0..3 {
                let l = make(&mut rng);
                if from_start {
                    written.push(l.clone());
                }
                buf.extend(l);
                buf.push(b'\n');
            }
            std::fs::write(&path, buf).unwrap();
        }
    }
    let mut f = follow_on(&rt, &path, p, 256, from_start).unwrap();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut partial: Option<Vec<u8>> = None;
    let mut generation = 0;
    let mut log = Vec::new();
    for _ in 0..70 {
        let step = rng.below_or_equal(9);
        log.push(step);
        match step {
            0..=2 => {
                let mut buf = partial.take().unwrap_or_default();
                for _ in 0..=rng.below_or_equal(3) {
                    let l = make(&mut rng);
                    written.push(l.clone());
                    buf.extend(l);
                    buf.push(b'\n');
                }
                if rng.below_or_equal(2) == 0 {
                    let l = make(&mut rng);
                    written.push(l.clone());
                    let cut = to_usize(rng.below_or_equal(u64::try_from(l.len()).unwrap()));
                    buf.extend(&l[..cut]);
                    let mut rest = l[cut..].to_vec();
                    rest.push(b'\n');
                    partial = Some(rest);
                }
                append(&path, &buf);
            }
            3 => {
                if let Some(rest) = partial.take() {
                    append(&path, &rest);
                }
            }
            4 | 5 if partial.is_none() => {
                got.extend(drain(&rt, &mut f, p).await);
                generation += 1;
                if path.exists() {
                    std::fs::rename(&path, dir.path().join(format!("app.log.{generation}")))
                        .unwrap();
                }
                let mut buf = Vec::new();
                match rng.below_or_equal(2) {
                    0 => {} // the path stays missing for a while
                    1 => std::fs::write(&path, "").unwrap(),
                    _ => {
                        for _ in 0..=rng.below_or_equal(3) {
                            let l = make(&mut rng);
                            written.push(l.clone());
                            buf.extend(l);
                            buf.push(b'\n');
                        }
                        std::fs::write(&path, &buf).unwrap();
                    }
                }
            }
            6 if partial.is_none() => {
                got.extend(drain(&rt, &mut f, p).await);
                // copy-then-truncate rotation
                let mut buf = Vec::new();
                for _ in 0..rng.below_or_equal(3) {
                    let l = make(&mut rng);
                    written.push(l.clone());
                    buf.extend(l);
                    buf.push(b'\n');
                }
                if path.exists() {
                    generation += 1;
                    std::fs::copy(&path, dir.path().join(format!("app.log.{generation}"))).unwrap();
                    let mut file = std::fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&path)
                        .unwrap();
                    file.write_all(&buf).unwrap();
                } else {
                    std::fs::write(&path, &buf).unwrap();
                }
            }
            7 => got.extend(drain(&rt, &mut f, p).await),
            _ => {
                // An impatient consumer: each next() is dropped after a random wait.
                for _ in 0..=rng.below_or_equal(3) {
                    let wait = ms(rng.below_or_equal(2 * 40));
                    match within(&rt, wait, f.next()).await {
                        Some(Some(Ok(l))) => got.push(l),
                        Some(Some(Err(e))) => panic!("seed {seed}: an error item: {e}"),
                        Some(None) => panic!("\"The stream never ends\", yet it ended"),
                        None => {}
                    }
                }
            }
        }
    }
    if let Some(rest) = partial.take() {
        append(&path, &rest);
    }
    got.extend(drain(&rt, &mut f, p).await);
    let shown = |v: &[Vec<u8>]| -> Vec<String> {
        v.iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()
    };
    // "every byte written to the old file before its rename is read before the old file is
    // let go; then the file now at the path is read from its start" / "A partial last line is
    // held until its newline arrives" / "Whatever happens to the file while the stream is not
    // polled is seen by the next check" / "the file is then read again from its start".
    assert_eq!(
        shown(&got),
        shown(&written),
        "seed {seed} (from_start {from_start}), steps {log:?}"
    );
}

#[test]
fn follow_through_seeded_rotations_truncations_and_dropped_next_futures_loses_nothing() {
    for seed in 1..=4u64 {
        on_every_runtime!(|rt| follow_random_script(rt, seed));
    }
}

// =============================================================================================
// follow_on: when it looks at the file.
// =============================================================================================

async fn follow_timing<R: Runtime>(rt: R) {
    let p = ms(100);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");

    // Megabytes waiting: checks back to back, not one a period.
    let mut data = Vec::new();
    let mut n = 0u32;
    while data.len() < (5 << 20) {
        data.extend(format!("line {n:08} {}\n", "y".repeat(40)).bytes());
        n += 1;
    }
    std::fs::write(&path, &data).unwrap();
    let mut f = follow_on(&rt, &path, p, 128, true).unwrap();
    let start = rt.now();
    for i in 0..n {
        let l = line(&rt, &mut f, p * 20).await;
        assert_eq!(&l[..13], format!("line {i:08}").as_bytes());
    }
    // "each next one by a poll that comes `period` or more after the previous one's result was
    // taken [...], or at once when that check left bytes unread (more than 1 MiB were
    // waiting)" / "a file growing faster is read in several checks, back to back, without
    // waiting for the next period."
    assert!(
        rt.now() - start < p,
        "5 MiB took {:?} of virtual time at a period of {p:?}",
        rt.now() - start
    );

    // After a check's result is taken, the next check waits for the period.
    append(&path, b"a\n");
    let asked = rt.now();
    assert_eq!(line(&rt, &mut f, p * 20).await, b"a");
    let got_a = rt.now();
    assert!(got_a - asked <= p + ms(1));
    append(&path, b"b\n");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"b");
    // "each next one by a poll that comes `period` or more after the previous one's result was
    // taken (which also debounces bursts of writes)"
    assert!(
        rt.now() - got_a >= p,
        "a check {:?} after the last",
        rt.now() - got_a
    );
    assert!(rt.now() - got_a <= p + ms(1), "{:?}", rt.now() - got_a);

    // Not polled for years: nothing looks at the file, so two replacements leave only the
    // newest to be read.
    rt.sleep(3 * YEAR).await;
    append(&path, b"c\n");
    std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
    std::fs::write(&path, "unseen\n").unwrap();
    rt.sleep(2 * YEAR).await;
    std::fs::rename(&path, dir.path().join("a.log.2")).unwrap();
    std::fs::write(&path, "newest\n").unwrap();
    // "The file is looked at only while the stream is polled." / "If the path was replaced more
    // than once since the last check, the file the follower had open and the one now at the
    // path are read: the ones in between came and went unseen."
    assert_eq!(line(&rt, &mut f, p * 20).await, b"c");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"newest");
    assert!(drain(&rt, &mut f, p).await.is_empty());
}

#[test]
fn follow_reads_a_backlog_back_to_back_debounces_by_period_and_looks_only_while_polled() {
    on_every_runtime!(follow_timing);
}

// =============================================================================================
// Interval: MissedTicks::Delay, late wake-ups and late consumers (manual polls on a FakeClock).
// =============================================================================================

type Ticks = Pin<Box<tidewall::stream::Interval<FakeClock>>>;

fn ticks(clock: &FakeClock, p: Duration, mode: MissedTicks) -> Ticks {
    Box::pin(interval_on(clock, p, mode).unwrap())
}

fn poll_tick(t: &mut Ticks) -> Poll<Option<Instant>> {
    t.as_mut().poll_next(&mut cx())
}

/// Advances `clock` to `at` (from `start`) and asserts the tick is not ready before then.
fn expect_tick_at(t: &mut Ticks, clock: &FakeClock, start: Instant, at: Duration, what: &str) {
    clock.advance_to(start + at - Duration::from_nanos(1));
    assert!(
        poll_tick(t).is_pending(),
        "{what}: a tick before {at:?} (now {:?})",
        clock.now() - start
    );
    clock.advance_to(start + at);
    match poll_tick(t) {
        Poll::Ready(Some(tick)) => assert_eq!(tick, start + at, "{what}: tick value"),
        other => panic!("{what}: no tick at {at:?}: {other:?}"),
    }
}

#[test]
fn interval_delay_keeps_the_schedule_for_a_wake_up_late_by_less_than_a_period() {
    let p = ms(100);
    for late in [ms(1), ms(50), ms(99)] {
        let clock = FakeClock::new();
        let start = clock.now();
        let mut t = ticks(&clock, p, MissedTicks::Delay);
        assert!(poll_tick(&mut t).is_pending(), "the consumer waits in time");
        // The wake-up it was waiting for comes late (a busy executor).
        clock.advance_to(start + p + late);
        let tick = poll_tick(&mut t);
        assert!(matches!(tick, Poll::Ready(Some(_))), "{tick:?}");
        // "a wake-up the consumer was already waiting for, made late by less than a period
        // (timer resolution, a busy executor), does not, so a consumer that is never late keeps
        // the schedule."
        expect_tick_at(
            &mut t,
            &clock,
            start,
            p * 2,
            &format!("wake-up {late:?} late"),
        );
        expect_tick_at(
            &mut t,
            &clock,
            start,
            p * 3,
            &format!("wake-up {late:?} late"),
        );
    }
}

#[test]
fn interval_delay_restarts_on_any_lateness_of_the_consumer() {
    let p = ms(100);
    for late in [
        Duration::from_nanos(1),
        ms(1),
        ms(50),
        ms(99),
        ms(100),
        ms(250),
    ] {
        let clock = FakeClock::new();
        let start = clock.now();
        let mut t = ticks(&clock, p, MissedTicks::Delay);
        expect_tick_at(&mut t, &clock, start, p, "first");
        // The consumer asks for the tick due at 200 ms only at 200 ms + late.
        clock.advance_to(start + p * 2 + late);
        let delivered = clock.now();
        let tick = poll_tick(&mut t);
        assert!(
            matches!(tick, Poll::Ready(Some(_))),
            "late {late:?}: {tick:?}"
        );
        // "Deliver one tick now and restart the schedule from it (the next tick is one period
        // after this delivery): the count drifts. Any lateness of the consumer restarts it"
        let next = delivered - start + p;
        expect_tick_at(
            &mut t,
            &clock,
            start,
            next,
            &format!("consumer {late:?} late"),
        );
        expect_tick_at(
            &mut t,
            &clock,
            start,
            next + p,
            &format!("consumer {late:?} late"),
        );
    }
}

#[test]
fn interval_delay_restarts_after_a_wake_up_late_by_a_period_or_more() {
    let p = ms(100);
    for late in [ms(100), ms(130), ms(1000)] {
        let clock = FakeClock::new();
        let start = clock.now();
        let mut t = ticks(&clock, p, MissedTicks::Delay);
        assert!(poll_tick(&mut t).is_pending());
        clock.advance_to(start + p + late);
        let delivered = clock.now();
        assert!(matches!(poll_tick(&mut t), Poll::Ready(Some(_))));
        // "`Burst` and `Skip` keep the schedule until the lateness reaches one period (a tick is
        // missed); `Delay` also acts on less." / "Deliver one tick now and restart the schedule
        // from it (the next tick is one period after this delivery)"
        expect_tick_at(
            &mut t,
            &clock,
            start,
            delivered - start + p,
            &format!("wake-up {late:?} late"),
        );
    }
}

#[test]
fn interval_burst_and_skip_keep_the_schedule_for_lateness_under_a_period() {
    let p = ms(100);
    for mode in [MissedTicks::Burst, MissedTicks::Skip] {
        for late in [ms(1), ms(60), ms(99)] {
            // A late wake-up.
            let clock = FakeClock::new();
            let start = clock.now();
            let mut t = ticks(&clock, p, mode);
            assert!(poll_tick(&mut t).is_pending());
            clock.advance_to(start + p + late);
            assert_eq!(poll_tick(&mut t), Poll::Ready(Some(start + p)));
            // "`Burst` and `Skip` keep the schedule until the lateness reaches one period"
            expect_tick_at(
                &mut t,
                &clock,
                start,
                p * 2,
                &format!("{mode:?} wake {late:?}"),
            );
            // A late consumer.
            clock.advance_to(start + p * 3 + late);
            assert_eq!(poll_tick(&mut t), Poll::Ready(Some(start + p * 3)));
            expect_tick_at(
                &mut t,
                &clock,
                start,
                p * 4,
                &format!("{mode:?} late {late:?}"),
            );
        }
    }
}

// =============================================================================================
// Interval: jitter is never cut short, never taken for lateness.
// =============================================================================================

/// The instants (from start) at which the first `n` ticks of a jittered interval became
/// ready, polling only when its timer fires, or also every `step` before then.
fn jittered_wakeups(
    mode: MissedTicks,
    p: Duration,
    jitter: Duration,
    seed: u64,
    n: u32,
    step: Option<Duration>,
) -> Vec<(Duration, Duration)> {
    let clock = FakeClock::new();
    let start = clock.now();
    let mut t: Ticks = Box::pin(
        interval_on(&clock, p, mode)
            .unwrap()
            .jitter(jitter, seed)
            .unwrap(),
    );
    let mut out = Vec::new();
    let mut polls = 0u64;
    while out.len() < to_usize(u64::from(n)) {
        polls += 1;
        assert!(polls < 10_000_000, "runaway");
        match poll_tick(&mut t) {
            Poll::Ready(Some(tick)) => out.push((tick - start, clock.now() - start)),
            Poll::Ready(None) => panic!("\"Never ends\", yet it ended"),
            Poll::Pending => match step {
                None => assert!(clock.advance_to_next_timer(), "pending with no timer"),
                Some(step) => {
                    let due = clock.next_timer().expect("pending with no timer");
                    clock.advance_to(due.min(clock.now() + step));
                }
            },
        }
    }
    out
}

#[test]
fn interval_jitter_is_not_cut_short_by_early_polls_in_any_mode() {
    let p = ms(100);
    for mode in [MissedTicks::Burst, MissedTicks::Skip, MissedTicks::Delay] {
        for (jitter, seed) in [(ms(30), 5u64), (ms(99), 6)] {
            let quiet = jittered_wakeups(mode, p, jitter, seed, 40, None);
            for step in [ms(1), ms(7), Duration::from_micros(333)] {
                let busy = jittered_wakeups(mode, p, jitter, seed, 40, Some(step));
                // "Polls before the jittered wake-up (another stream woke the task) do not cut
                // it short." / "a consumer that asked for a tick in time gets it at its jittered
                // wake-up, however often its task is polled before then"
                assert_eq!(
                    busy, quiet,
                    "{mode:?} jitter {jitter:?}, polled every {step:?}"
                );
            }
            for (k, (tick, woke)) in quiet.iter().enumerate() {
                let k = u32::try_from(k).unwrap() + 1;
                // "without moving the schedule" / "a consumer on time gets every tick on the
                // schedule, in every MissedTicks mode, whatever the jitter."
                assert_eq!(*tick, p * k, "{mode:?}: tick {k}");
                // "delays each wake-up by a random amount up to the jitter"
                assert!(
                    *woke >= *tick && *woke <= *tick + jitter,
                    "{mode:?}: tick {k} woke at {woke:?}"
                );
            }
        }
    }
}

#[test]
fn interval_jitter_beyond_the_period_is_not_taken_for_lateness_in_any_mode() {
    let p = ms(100);
    for mode in [MissedTicks::Burst, MissedTicks::Skip, MissedTicks::Delay] {
        let got = jittered_wakeups(mode, p, ms(250), 9, 60, None);
        for (k, (tick, woke)) in got.iter().enumerate() {
            let k = u32::try_from(k).unwrap() + 1;
            // "The delay is never taken for lateness: a consumer on time gets every tick on the
            // schedule, in every MissedTicks mode, whatever the jitter."
            assert_eq!(*tick, p * k, "{mode:?}: tick {k} (woke at {woke:?})");
        }
    }
}

#[derive(Debug, PartialEq)]
enum Merged {
    Jittered(Instant),
    Busy,
}

async fn jitter_merged<R: Runtime>(rt: R) {
    let p = ms(100);
    let jitter = ms(60);
    for mode in [MissedTicks::Burst, MissedTicks::Skip, MissedTicks::Delay] {
        // Alone.
        let start = rt.now();
        let mut alone = std::pin::pin!(
            interval_on(&rt, p, mode)
                .unwrap()
                .jitter(jitter, 42)
                .unwrap()
        );
        let mut quiet = Vec::new();
        for _ in 0..25 {
            let tick = alone.next().await.unwrap();
            quiet.push((tick - start, rt.now() - start));
        }
        // Merged with a stream that wakes the task every millisecond.
        let start = rt.now();
        let jittered = interval_on(&rt, p, mode)
            .unwrap()
            .jitter(jitter, 42)
            .unwrap()
            .map(Merged::Jittered);
        let busy = interval_on(&rt, ms(1), MissedTicks::Skip)
            .unwrap()
            .map(|_| Merged::Busy);
        let mut merged = std::pin::pin!(jittered.prioritized(busy));
        let mut busy_seen = 0u32;
        let mut noisy = Vec::new();
        while noisy.len() < 25 {
            match merged.next().await.unwrap() {
                Merged::Jittered(tick) => noisy.push((tick - start, rt.now() - start)),
                Merged::Busy => busy_seen += 1,
            }
        }
        assert!(busy_seen > 1000, "the other stream did wake the task");
        // "a consumer that asked for a tick in time gets it at its jittered wake-up, however
        // often its task is polled before then (by other streams merged or selected with this
        // one)" / "Polls before the jittered wake-up (another stream woke the task) do not cut
        // it short."
        assert_eq!(noisy, quiet, "{mode:?}");
    }
}

#[test]
fn interval_jitter_merged_with_a_busy_stream_wakes_exactly_as_alone() {
    on_every_runtime!(jitter_merged);
}

#[test]
fn interval_next_dropped_at_random_points_keeps_the_tick_and_its_jittered_wakeup() {
    let p = ms(100);
    for mode in [MissedTicks::Burst, MissedTicks::Skip, MissedTicks::Delay] {
        let quiet = jittered_wakeups(mode, p, ms(40), 77, 30, None);
        let clock = FakeClock::new();
        let start = clock.now();
        let mut t: Ticks = Box::pin(
            interval_on(&clock, p, mode)
                .unwrap()
                .jitter(ms(40), 77)
                .unwrap(),
        );
        let mut rng = SplitMix64::new(88);
        let mut got = Vec::new();
        while got.len() < 30 {
            // A `next()` future polled a random number of times, advancing time short of the
            // wake-up between polls, then dropped; the last one is polled to the end.
            let mut next = t.next();
            let polls = rng.below_or_equal(4);
            let mut ready = None;
            for _ in 0..=polls {
                match Pin::new(&mut next).poll(&mut cx()) {
                    Poll::Ready(tick) => {
                        ready = Some(tick.unwrap());
                        break;
                    }
                    Poll::Pending => {
                        let due = clock.next_timer().unwrap();
                        let left = u64::try_from((due - clock.now()).as_nanos()).unwrap();
                        clock.advance(Duration::from_nanos(rng.below_or_equal(left)));
                    }
                }
            }
            drop(next);
            if let Some(tick) = ready {
                got.push((tick - start, clock.now() - start));
            }
        }
        // "Cancel safety: dropping a next() future loses no tick: the tick it waited for is the
        // next one delivered." / "gets it at its jittered wake-up, however often its task is
        // polled before then"
        assert_eq!(got, quiet, "{mode:?}");
    }
}

// =============================================================================================
// Interval and pacing over long idle gaps (years of virtual time), on every runtime.
// =============================================================================================

async fn interval_years<R: Runtime>(rt: R) {
    // Burst: a tick a day, a consumer away for ten years, every tick counted.
    let start = rt.now();
    let mut t = std::pin::pin!(interval_on(&rt, DAY, MissedTicks::Burst).unwrap());
    assert_eq!(t.next().await, Some(start + DAY));
    rt.sleep(3650 * DAY).await;
    let back = rt.now();
    for k in 2..=3651u32 {
        // "Deliver every missed tick at once, then continue on the original schedule
        // (`start + k × period`): the count of ticks is exact"
        assert_eq!(t.next().await, Some(start + DAY * k), "tick {k}");
    }
    assert_eq!(rt.now(), back, "missed ticks come at once");
    assert_eq!(t.next().await, Some(start + DAY * 3652));
    assert_eq!(rt.now(), start + DAY * 3652);

    // Delay: away for three years; one tick at once, the next one period later.
    let p = ms(250);
    let start = rt.now();
    let mut t = std::pin::pin!(interval_on(&rt, p, MissedTicks::Delay).unwrap());
    assert_eq!(t.next().await, Some(start + p));
    rt.sleep(3 * YEAR).await;
    let back = rt.now();
    let late = t.next().await.unwrap();
    assert_eq!(rt.now(), back, "one tick now");
    assert!(late >= start + p * 2 && late <= back, "{:?}", late - start);
    // "Deliver one tick now and restart the schedule from it (the next tick is one period after
    // this delivery)"
    assert_eq!(t.next().await, Some(back + p));
    assert_eq!(rt.now(), back + p);
    assert_eq!(t.next().await, Some(back + p * 2));

    // Skip: away for three years at a 3 ms period (more than 2^34 periods).
    let p = ms(3);
    let start = rt.now();
    let mut t = std::pin::pin!(interval_on(&rt, p, MissedTicks::Skip).unwrap());
    assert_eq!(t.next().await, Some(start + p));
    rt.sleep(3 * YEAR + ms(1)).await;
    let back = rt.now();
    // "Deliver one tick now (the earliest missed point) and drop the other missed ones; the
    // next tick is the first point of the original schedule after the late one was delivered,
    // however long the stall"
    assert_eq!(t.next().await, Some(start + p * 2));
    let next = t.next().await.unwrap();
    assert!(next > back && next <= back + p, "{:?}", next - back);
    assert_eq!(
        (next - start).as_nanos() % p.as_nanos(),
        0,
        "off the schedule"
    );
}

#[test]
fn interval_after_years_of_idleness_follows_its_missed_tick_mode_on_every_runtime() {
    on_every_runtime!(interval_years);
}

async fn throttle_years<R: Runtime>(rt: R) {
    let p = ms(100);
    let polled: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let source = {
        let polled = Arc::clone(&polled);
        let rt = rt.clone();
        let mut n = 0u32;
        stream::poll_fn(move |_| {
            polled.lock().unwrap().push(rt.now());
            n += 1;
            Poll::Ready(Some(n))
        })
    };
    let mut t = std::pin::pin!(source.throttle_on(&rt, p).unwrap());
    let mut delivered = Vec::new();
    for round in 0..4u32 {
        for _ in 0..5 {
            let item = t.next().await.unwrap();
            delivered.push((item, rt.now()));
        }
        // Years between bursts of demand.
        rt.sleep(YEAR * (round + 1)).await;
    }
    for pair in delivered.windows(2) {
        let ((_, a), (_, b)) = (pair[0], pair[1]);
        // "No burst: after an item, the next is delivered no earlier than `period` later."
        assert!(b - a >= p, "items {:?} apart", b - a);
    }
    let items: Vec<u32> = delivered.iter().map(|(n, _)| *n).collect();
    assert_eq!(items, (1..=20).collect::<Vec<_>>());
    let polled = polled.lock().unwrap().clone();
    // "The source is not polled while the throttle waits, so it is paused, not buffered."
    assert_eq!(polled.len(), 20, "the source was pulled ahead: {polled:?}");
    for (i, at) in polled.iter().enumerate().skip(1) {
        assert!(
            *at >= delivered[i - 1].1 + p,
            "source polled {:?} after item {i} was delivered",
            *at - delivered[i - 1].1
        );
    }
}

#[test]
fn throttle_after_years_of_idleness_does_not_burst_or_pull_ahead_on_every_runtime() {
    on_every_runtime!(throttle_years);
}

// =============================================================================================
// Batch: greedy filling, backpressure, time over an always-ready source.
// =============================================================================================

#[test]
fn batch_weighted_fills_greedily_and_pulls_at_most_one_item_past_what_it_emitted() {
    for seed in 0..20u64 {
        let mut rng = SplitMix64::new(seed);
        let max_weight = rng.below_or_equal(30) + 1;
        let n = 300;
        let weights: Vec<u64> = (0..n)
            .map(|_| match rng.below_or_equal(9) {
                0 => 0,
                1 => max_weight + rng.below_or_equal(5),
                2 => max_weight,
                _ => rng.below_or_equal(max_weight / 2 + 1),
            })
            .collect();
        let pulls = Arc::new(AtomicUsize::new(0));
        let source = {
            let pulls = Arc::clone(&pulls);
            stream::iter(weights.clone().into_iter().enumerate()).inspect(move |_| {
                pulls.fetch_add(1, SeqCst);
            })
        };
        let clock = FakeClock::new();
        let mut b = Box::pin(
            source
                .batch_weighted_on(&clock, max_weight, |(_, w): &(usize, u64)| *w, YEAR)
                .unwrap(),
        );
        let flag = Arc::new(Flag::default());
        let waker = futures_util::task::waker(Arc::clone(&flag));
        let mut ctx = Context::from_waker(&waker);
        let mut batches: Vec<Vec<(usize, u64)>> = Vec::new();
        let mut delivered = 0;
        loop {
            flag.0.store(false, SeqCst);
            match b.as_mut().poll_next(&mut ctx) {
                Poll::Ready(Some(batch)) => {
                    delivered += batch.len();
                    // "at most one batch (plus one carried-over item) is held; the source is not
                    // polled while a finished batch waits for the consumer."
                    assert!(
                        pulls.load(SeqCst) <= delivered + 1,
                        "seed {seed}: {} pulled, {delivered} delivered",
                        pulls.load(SeqCst)
                    );
                    batches.push(batch);
                }
                Poll::Ready(None) => break,
                // An always-ready source: a Pending is only a yield, and must wake itself.
                Poll::Pending => assert!(
                    flag.0.load(SeqCst),
                    "seed {seed}: Pending over an always-ready source without a wake-up"
                ),
            }
        }
        let flat: Vec<(usize, u64)> = batches.iter().flatten().copied().collect();
        assert_eq!(
            flat.len(),
            to_usize(n),
            "seed {seed}: items lost or duplicated"
        );
        assert!(flat.iter().enumerate().all(|(i, (j, _))| i == *j), "order");
        let w = |x: u64| x.max(1); // "0 counts as 1"
        for (i, batch) in batches.iter().enumerate() {
            // "Empty batches are never emitted."
            assert!(!batch.is_empty());
            let total: u64 = batch.iter().map(|(_, x)| w(*x)).sum();
            // "An item heavier than `max_weight` on its own is emitted alone"
            assert!(
                total <= max_weight || batch.len() == 1,
                "seed {seed}: batch {i} weighs {total} > {max_weight}"
            );
            if let Some(next) = batches.get(i + 1) {
                // "A batch is emitted when it is full (the next item would not fit)" — the time
                // limit is a year that never passes here, and the stream has not ended.
                assert!(
                    total + w(next[0].1) > max_weight,
                    "seed {seed}: batch {i} ({total}) emitted though the next item ({}) fits in {max_weight}",
                    w(next[0].1)
                );
            }
        }
    }
}

/// An always-ready source whose every item takes 1 ms of virtual time.
fn ticking_source(clock: &FakeClock) -> impl Stream<Item = Instant> + Unpin + use<> {
    let clock = clock.clone();
    stream::poll_fn(move |_| {
        clock.advance(ms(1));
        Poll::Ready(Some(clock.now()))
    })
}

#[test]
fn batch_time_limit_over_an_always_ready_source_is_noticed_within_16_items() {
    for max_wait in [ms(10), ms(33)] {
        let clock = FakeClock::new();
        let mut b = Box::pin(
            ticking_source(&clock)
                .batch_on(&clock, usize::MAX, max_wait)
                .unwrap(),
        );
        let flag = Arc::new(Flag::default());
        let waker = futures_util::task::waker(Arc::clone(&flag));
        let mut ctx = Context::from_waker(&waker);
        let mut batches = 0;
        let mut polls = 0;
        while batches < 20 {
            polls += 1;
            assert!(polls < 100_000, "no batch ends over a busy source");
            flag.0.store(false, SeqCst);
            match b.as_mut().poll_next(&mut ctx) {
                Poll::Ready(Some(batch)) => {
                    batches += 1;
                    let span = *batch.last().unwrap() - batch[0];
                    let wait_items = to_usize(u64::try_from(max_wait.as_millis()).unwrap());
                    // "emitting a batch early once `max_wait` has passed since its first item"
                    // — not before.
                    assert!(span + ms(1) >= max_wait, "a batch of {span:?} ended early");
                    // "when `max_wait` has passed since its *first* item arrived (noticed within
                    // 16 items while the source stays ready, so a time-only batch over a busy
                    // source still ends)"
                    assert!(
                        batch.len() <= wait_items + 16 + 1,
                        "a {max_wait:?} batch of {} items ({span:?})",
                        batch.len()
                    );
                }
                Poll::Ready(None) => panic!("ended"),
                Poll::Pending => assert!(flag.0.load(SeqCst), "Pending with nothing to wake it"),
            }
        }
    }
}

// =============================================================================================
// LineReader: exactly at the limit, one past, CRLF, last line without newline.
// =============================================================================================

/// A reader over `data` returning random-sized reads, sometimes `Pending` (waking itself).
struct Choppy {
    data: Vec<u8>,
    at: usize,
    rng: SplitMix64,
    max_read: u64,
}

impl AsyncRead for Choppy {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if self.rng.below_or_equal(3) == 0 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let max_read = self.max_read;
        let max = to_usize(self.rng.below_or_equal(max_read - 1) + 1);
        let n = buf.len().min(max).min(self.data.len() - self.at);
        let at = self.at;
        buf[..n].copy_from_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(n))
    }
}

/// Polls `f` to completion on this thread; a `Pending` must come with a wake-up.
fn block_on_spinning<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let flag = Arc::new(Flag::default());
    let waker = futures_util::task::waker(Arc::clone(&flag));
    let mut ctx = Context::from_waker(&waker);
    loop {
        flag.0.store(false, SeqCst);
        match f.as_mut().poll(&mut ctx) {
            Poll::Ready(v) => return v,
            Poll::Pending => assert!(flag.0.load(SeqCst), "Pending without a wake-up"),
        }
    }
}

fn split_lines(data: &[u8]) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = data.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    if data.is_empty() || data.ends_with(b"\n") {
        lines.pop();
    }
    lines
}

#[test]
fn line_reader_at_the_limit_one_past_crlf_and_eof_lines_for_every_buffer_size() {
    let mut rng = SplitMix64::new(1234);
    for max_line in [1usize, 2, 7, 64] {
        for buffer in [
            1,
            max_line,
            max_line + 1,
            max_line + 2,
            2 * max_line + 3,
            4096,
        ] {
            for case in 0..12u64 {
                let mut data = Vec::new();
                let count = rng.below_or_equal(40);
                for _ in 0..count {
                    let len = match rng.below_or_equal(5) {
                        0 => 0,
                        1 => max_line - 1,
                        2 | 3 => max_line,
                        4 => max_line + 1,
                        _ => max_line * 3 + 1,
                    };
                    let mut l = vec![b'a' + u8::try_from(rng.below_or_equal(25)).unwrap(); len];
                    // A trailing \r sometimes, counted in the line: "a trailing \r is kept".
                    if len > 0 && rng.below_or_equal(2) == 0 {
                        *l.last_mut().unwrap() = b'\r';
                    }
                    data.extend(l);
                    data.push(b'\n');
                }
                if case % 3 == 0 {
                    data.pop(); // "a last line without \n is delivered at end of input"
                }
                let want_all = split_lines(&data);
                for overlong in [Overlong::Skip, Overlong::Error] {
                    let reader = Choppy {
                        data: data.clone(),
                        at: 0,
                        rng: SplitMix64::new(case),
                        max_read: 1 + rng.below_or_equal(3 * u64::try_from(buffer).unwrap()),
                    };
                    let mut r = LineReader::new(reader, buffer, max_line, overlong).unwrap();
                    let mut got = Vec::new();
                    let mut failed = None;
                    block_on_spinning(async {
                        loop {
                            match r.next_batch().await {
                                Ok(Some(b)) => {
                                    // "A batch is never empty"
                                    assert!(b.lines().next().is_some(), "an empty batch");
                                    // "Memory is the buffer [...] at most max(buffer, max_line
                                    // + 1) bytes"
                                    assert!(b.as_bytes().len() <= buffer.max(max_line + 1));
                                    got.extend(b.lines().map(<[u8]>::to_vec));
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    failed = Some(e);
                                    break;
                                }
                            }
                        }
                    });
                    let what =
                        format!("max_line {max_line} buffer {buffer} case {case} {overlong:?}");
                    match overlong {
                        Overlong::Skip => {
                            assert!(failed.is_none(), "{what}: {failed:?}");
                            let want: Vec<Vec<u8>> = want_all
                                .iter()
                                .filter(|l| l.len() <= max_line)
                                .cloned()
                                .collect();
                            // "Skip the line (counted in LineReader::skipped) and go on"
                            assert_eq!(got, want, "{what}");
                            assert_eq!(
                                r.skipped(),
                                u64::try_from(want_all.len() - want.len()).unwrap(),
                                "{what}"
                            );
                        }
                        Overlong::Error => {
                            let first_bad = want_all.iter().position(|l| l.len() > max_line);
                            match first_bad {
                                // "the complete lines before it are delivered first, then this
                                // and every later call fails"
                                Some(i) => {
                                    assert_eq!(got, want_all[..i].to_vec(), "{what}");
                                    assert!(
                                        matches!(failed, Some(LinesError::TooLong { .. })),
                                        "{what}: {failed:?}"
                                    );
                                    // "then this and every later call fails (the reader stops
                                    // at that line)"
                                    let again = block_on_spinning(async {
                                        r.next_batch().await.map(|b| b.is_some())
                                    });
                                    assert!(
                                        matches!(again, Err(LinesError::TooLong { .. })),
                                        "{what}: then {again:?}"
                                    );
                                }
                                None => {
                                    assert!(failed.is_none(), "{what}: {failed:?}");
                                    assert_eq!(got, want_all, "{what}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

// =============================================================================================
// BlockingReader: read-ahead bound, files, cancel safety, constant memory.
// =============================================================================================

/// A "regular file" of endless lines that counts its reads.
struct CountingFile {
    reads: Arc<AtomicUsize>,
}

impl io::Read for CountingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads.fetch_add(1, SeqCst);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = if i % 10 == 9 { b'\n' } else { b'r' };
        }
        Ok(buf.len())
    }
}

fn settle_reads(reads: &AtomicUsize, at_least: usize) -> usize {
    // A bound on waiting for an expected read, never a timing assertion: a loaded machine may
    // take long to schedule the blocking pool, and only a missing read may end the wait.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while reads.load(SeqCst) < at_least && std::time::Instant::now() < deadline {
        std::thread::sleep(ms(2));
    }
    // Give any further (forbidden) read-ahead a chance to show.
    std::thread::sleep(ms(150));
    reads.load(SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reader_reads_one_chunk_ahead_and_no_more() {
    let chunk = 4096;
    let reads = Arc::new(AtomicUsize::new(0));
    let mut r = BlockingReader::new(
        Tokio,
        CountingFile {
            reads: Arc::clone(&reads),
        },
        chunk,
    )
    .unwrap();
    // "`new` starts the first read at once"
    assert_eq!(settle_reads(&reads, 1), 1, "reads before any poll");
    let mut byte = [0u8; 1];
    r.read_exact(&mut byte).await.unwrap();
    // "while the consumer works through one chunk, the next is being read" — without another
    // poll: the consumer is working, not reading.
    assert_eq!(
        settle_reads(&reads, 2),
        2,
        "reads while the consumer works through the first chunk"
    );
    let mut rest = vec![0u8; chunk - 1];
    r.read_exact(&mut rest).await.unwrap();
    for consumed in 1..=20usize {
        // "Memory is two chunks, whatever the file size": the consumer has all of `consumed`
        // chunks; at most the next one is held and one more being read.
        let n = settle_reads(&reads, consumed + 1);
        assert!(
            n <= consumed + 2,
            "{n} reads after {consumed} chunks consumed"
        );
        let mut c = vec![0u8; chunk];
        r.read_exact(&mut c).await.unwrap();
    }
}

fn make_file(dir: &Path, name: &str, seed: u64, lines: usize) -> (PathBuf, Vec<u8>) {
    let mut rng = SplitMix64::new(seed);
    let mut data = Vec::new();
    for i in 0..lines {
        let pad = "z".repeat(to_usize(rng.below_or_equal(70)));
        let cr = if rng.below_or_equal(4) == 0 { "\r" } else { "" };
        data.extend(format!("{i} {pad}{cr}\n").bytes());
    }
    if seed % 2 == 1 {
        data.extend(b"last line without newline");
    }
    let path = dir.join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

async fn blocking_files<R: Runtime>(rt: R) {
    let dir = tempfile::tempdir().unwrap();
    // Empty, one newline, CRLF and a last line without newline, and a file many times the chunk.
    let cases: [&[u8]; 4] = [b"", b"\n", b"a\r\nb\r\n\r\nc", b"only"];
    for data in cases {
        let path = dir.path().join("small");
        std::fs::write(&path, data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let reader = BlockingReader::new(rt.clone(), file, 3).unwrap();
        let mut lines = LineReader::new(reader, 8, 16, Overlong::Error).unwrap();
        let mut got = Vec::new();
        while let Some(b) = lines.next_batch().await.unwrap() {
            got.extend(b.lines().map(<[u8]>::to_vec));
        }
        // "A line is the bytes before \n (a trailing \r is kept); a last line without \n is
        // delivered at end of input."
        assert_eq!(got, split_lines(data), "{data:?}");
        assert!(lines.next_batch().await.unwrap().is_none());
    }
    let (path, data) = make_file(dir.path(), "big", 3, 20_000);
    let file = std::fs::File::open(&path).unwrap();
    let reader = BlockingReader::new(rt.clone(), file, 4096).unwrap();
    let mut lines = LineReader::new(reader, 1000, 200, Overlong::Error).unwrap();
    let mut got = Vec::new();
    while let Some(b) = lines.next_batch().await.unwrap() {
        got.extend(b.lines().map(<[u8]>::to_vec));
    }
    // "Runtime-agnostic" / "a regular file on a local disk fills whole chunks"
    assert_eq!(got, split_lines(&data));
}

#[test]
fn blocking_reader_into_line_reader_on_every_runtime_handles_empty_crlf_and_eof_lines() {
    on_every_runtime!(blocking_files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reader_line_batches_dropped_at_random_points_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 0..4u64 {
        let (path, data) = make_file(dir.path(), "f", seed, if seed == 0 { 300 } else { 3000 });
        let want = split_lines(&data);
        let file = std::fs::File::open(&path).unwrap();
        let chunk = [1usize, 7, 512, 65_536][to_usize(seed)];
        let reader = BlockingReader::new(Tokio, file, chunk).unwrap();
        let mut lines = LineReader::new(reader, 300, 200, Overlong::Error).unwrap();
        let mut rng = SplitMix64::new(seed + 500);
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut done = false;
        let mut dropped = 0;
        while !done {
            let polls = rng.below_or_equal(3);
            let mut fut = Box::pin(lines.next_batch());
            let mut finished = false;
            for _ in 0..polls {
                match fut.as_mut().poll(&mut cx()) {
                    Poll::Pending => {
                        if rng.below_or_equal(1) == 0 {
                            tokio::task::yield_now().await;
                        } else {
                            tokio::time::sleep(Duration::from_micros(rng.below_or_equal(300)))
                                .await;
                        }
                    }
                    Poll::Ready(Ok(Some(b))) => {
                        got.extend(b.lines().map(<[u8]>::to_vec));
                        finished = true;
                        break;
                    }
                    Poll::Ready(Ok(None)) => {
                        done = true;
                        finished = true;
                        break;
                    }
                    Poll::Ready(Err(e)) => panic!("seed {seed}: {e}"),
                }
            }
            if !finished {
                dropped += 1;
            }
        }
        assert!(
            dropped > 5,
            "seed {seed}: the futures were dropped mid-read"
        );
        // "Cancel safety: dropping the future between reads loses nothing; dropped during a
        // read, the bytes that read had not returned yet are not lost either (the reader keeps
        // them), but the partial line already buffered stays buffered for the next call."
        assert_eq!(got.len(), want.len(), "seed {seed} chunk {chunk}");
        assert_eq!(got, want, "seed {seed} chunk {chunk}");
    }
}

const MEMORY_CHILD: &str = "TIDEWALL_SESSION_MEMORY_CHILD";

/// The child process's side of the test below, whose heap it measures alone.
fn memory_child() {
    if std::env::var_os(MEMORY_CHILD).is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.log");
    let total: u64 = 64 << 20;
    {
        let mut out = io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut written = 0u64;
        let mut n = 0u64;
        while written < total {
            let line = format!("2026-01-01T00:00:00Z GET /item/{n} {}\n", n % 7);
            out.write_all(line.as_bytes()).unwrap();
            written += u64::try_from(line.len()).unwrap();
            n += 1;
        }
        out.flush().unwrap();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let chunk = 64 * 1024;
    let buffer = 64 * 1024;
    let max_line = 4096;
    let ((lines, bytes), peak) = runtime.block_on(async {
        // Warm the blocking pool, so its thread is not counted as the reader's memory.
        tidewall::rt::Spawn::spawn_blocking(&Tokio, || ())
            .await
            .unwrap();
        LIVE.store(0, SeqCst);
        PEAK.store(0, SeqCst);
        MEASURING.store(true, SeqCst);
        let file = std::fs::File::open(&path).unwrap();
        let reader = BlockingReader::new(Tokio, file, chunk).unwrap();
        let mut r = LineReader::new(reader, buffer, max_line, Overlong::Error).unwrap();
        let mut lines = 0u64;
        let mut bytes = 0u64;
        while let Some(b) = r.next_batch().await.unwrap() {
            lines += u64::try_from(b.lines().count()).unwrap();
            bytes += u64::try_from(b.as_bytes().len()).unwrap();
        }
        drop(r);
        MEASURING.store(false, SeqCst);
        ((lines, bytes), PEAK.load(SeqCst))
    });
    assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
    assert!(lines > 1_000_000);
    // "Memory is two chunks, whatever the file size" (BlockingReader) / "Memory is the buffer,
    // fixed at construction: at most max(buffer, max_line + 1) bytes, whatever the input size"
    // (LineReader): 192 KiB of buffers, plus 32 KiB for the runtime's own bookkeeping.
    let bound = 2 * chunk + buffer.max(max_line + 1);
    #[allow(clippy::print_stdout, reason = "the parent reads the child's figures")]
    {
        println!("peak {peak} bound {bound}");
    }
    assert!(
        usize::try_from(peak).unwrap() <= bound + 32 * 1024,
        "peak heap {peak} bytes reading a 64 MiB file with {bound} bytes of buffers"
    );
}

#[test]
fn blocking_reader_and_line_reader_stream_a_file_far_larger_than_their_buffers() {
    if std::env::var_os(MEMORY_CHILD).is_some() {
        memory_child();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "blocking_reader_and_line_reader_stream_a_file_far_larger_than_their_buffers",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MEMORY_CHILD, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(text.contains("peak "), "the child did not run:\n{text}");
}

// =============================================================================================
// DirWatch: the 1024-event queue.
// =============================================================================================

/// Changes the mode of `a` and `b` alternately `events` times (one raw attribute event each,
/// never two identical ones in a row), while nobody polls `watch`; then collects every batch.
fn queued_attribute_events(events: usize) -> Vec<tidewall::stream::DirChanges> {
    use std::os::unix::fs::PermissionsExt as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let dir_path = dir.path().canonicalize().unwrap();
        let a = dir_path.join("a");
        let b = dir_path.join("b");
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        tokio::time::sleep(ms(200)).await;
        let mut watch = watch_dir_on(&Tokio, &dir_path, ms(50)).unwrap();
        tokio::time::sleep(ms(200)).await;
        for i in 0..events {
            let (path, mode) = match i % 4 {
                0 => (&a, 0o600),
                1 => (&b, 0o600),
                2 => (&a, 0o644),
                _ => (&b, 0o644),
            };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        // Let the OS watcher hand everything over while the stream is not polled.
        tokio::time::sleep(ms(1500)).await;
        let mut batches = Vec::new();
        while let Ok(Some(batch)) = tokio::time::timeout(ms(1000), watch.next()).await {
            batches.push(batch.expect("a watch error"));
        }
        drop(dir);
        batches
    })
}

#[test]
fn dir_watch_holds_1024_queued_events_and_flags_the_1025th_as_dropped() {
    let a = |batches: &[tidewall::stream::DirChanges]| batches.iter().any(|b| b.overflowed);
    let under = queued_attribute_events(1000);
    // "Bounded: at most 1024 raw events wait [...]; past either, the rest are dropped and the
    // batch is marked `overflowed`" — 1000 wait: nothing dropped.
    assert!(!under.is_empty(), "no batch for 1000 changes");
    assert!(!a(&under), "1000 queued events reported as overflowed");
    let names: Vec<_> = under
        .iter()
        .flat_map(|b| b.paths.iter())
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n == "a") && names.iter().any(|n| n == "b"),
        "{names:?}"
    );
    for batch in &under {
        // "The paths that changed [...], sorted, each once."
        let mut sorted = batch.paths.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, batch.paths);
    }
    let exact = queued_attribute_events(1024);
    // "at most 1024 raw events wait": exactly 1024 fit.
    assert!(!a(&exact), "1024 queued events reported as overflowed");
    let over = queued_attribute_events(1025);
    // "past either, the rest are dropped and the batch is marked `overflowed`"
    assert!(
        a(&over),
        "1025 queued events, no overflow reported: {over:?}"
    );
    let far_over = queued_attribute_events(5000);
    assert!(a(&far_over), "5000 queued events, no overflow reported");
}

#[test]
fn dir_watch_reports_changes_again_after_an_overflow() {
    use std::os::unix::fs::PermissionsExt as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let dir_path = dir.path().canonicalize().unwrap();
        let a = dir_path.join("a");
        let b = dir_path.join("b");
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        let mut watch = watch_dir_on(&Tokio, &dir_path, ms(50)).unwrap();
        tokio::time::sleep(ms(200)).await;
        for i in 0..3000u32 {
            let path = if i % 2 == 0 { &a } else { &b };
            let mode = if i % 4 < 2 { 0o600 } else { 0o644 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        tokio::time::sleep(ms(1500)).await;
        let mut overflowed = false;
        while let Ok(Some(batch)) = tokio::time::timeout(ms(1000), watch.next()).await {
            overflowed |= batch.expect("a watch error").overflowed;
        }
        assert!(overflowed, "3000 queued events without an overflow");
        // After the consumer caught up, a new change is reported, without the flag.
        let c = dir_path.join("c");
        std::fs::write(&c, "c").unwrap();
        let batch = tokio::time::timeout(ms(5000), watch.next())
            .await
            .expect("no batch after the overflow")
            .expect("the stream ended")
            .expect("a watch error");
        // "The stream ends only if the watcher stops." / "Some events were dropped because the
        // consumer fell behind" — none were, this time.
        assert!(batch.paths.contains(&c), "{batch:?}");
        assert!(!batch.overflowed, "{batch:?}");
    });
}

// =============================================================================================
// write_atomic: names at the 255-byte limit.
// =============================================================================================

fn dir_entries(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names
}

/// Names of exactly 255 bytes: 0–3 ASCII bytes, then 4-byte characters, then ASCII, so that
/// the 64-byte prefix of the temporary file's name falls at every offset inside a character.
fn names_of_255_bytes() -> Vec<String> {
    let mut names = Vec::new();
    for lead in 0..4usize {
        let mut s = "a".repeat(lead);
        while s.len() + 4 <= 255 {
            s.push('\u{1F980}'); // 4 bytes
        }
        while s.len() < 255 {
            s.push('z');
        }
        assert_eq!(s.len(), 255);
        names.push(s);
    }
    // 3-byte and 2-byte characters too.
    for (c, width) in [('\u{20AC}', 3usize), ('\u{00E9}', 2)] {
        for lead in 0..width {
            let mut s = "b".repeat(lead);
            while s.len() + width <= 255 {
                s.push(c);
            }
            while s.len() < 255 {
                s.push('y');
            }
            names.push(s);
        }
    }
    names
}

async fn write_atomic_long_names<R: Runtime>(rt: R) {
    let dir = tempfile::tempdir().unwrap();
    for name in names_of_255_bytes() {
        let path = dir.path().join(&name);
        // "The temporary file's name is the target's (at most its first 64 bytes, cut at a
        // character boundary) with a unique suffix of at most 46 bytes, so names near the file
        // system's limit fit."
        tidewall::fs::write_atomic(&rt, &path, b"first".to_vec())
            .await
            .unwrap_or_else(|e| panic!("creating a {}-byte name: {e}", name.len()));
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        tidewall::fs::write_atomic(&rt, &path, b"second".to_vec())
            .await
            .unwrap_or_else(|e| panic!("replacing a {}-byte name: {e}", name.len()));
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(
            dir_entries(dir.path()),
            std::slice::from_ref(&path),
            "a stray file"
        );
        std::fs::remove_file(&path).unwrap();
    }
    // One byte past the limit: an error, and nothing left behind.
    let mut name = names_of_255_bytes().remove(1);
    name.push('q');
    let path = dir.path().join(&name);
    let r = tidewall::fs::write_atomic(&rt, &path, b"x".to_vec()).await;
    // "an error up to the rename leaves the target untouched and the temporary file removed"
    assert!(r.is_err(), "a 256-byte name was written");
    assert_eq!(
        dir_entries(dir.path()),
        Vec::<PathBuf>::new(),
        "a stray temporary file"
    );
}

#[test]
fn write_atomic_handles_255_byte_names_of_multibyte_characters_on_every_runtime() {
    on_every_runtime!(write_atomic_long_names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_atomic_with_a_255_byte_name_dropped_at_random_points_leaves_old_or_new_only() {
    let rt = Counting::default();
    let dir = tempfile::tempdir().unwrap();
    let name = names_of_255_bytes().remove(3);
    let path = dir.path().join(&name);
    std::fs::write(&path, b"generation 0").unwrap();
    let mut current = b"generation 0".to_vec();
    let mut rng = SplitMix64::new(99);
    for generation in 1..=60u32 {
        let new = format!(
            "generation {generation} {}",
            "#".repeat(to_usize(rng.below_or_equal(50_000)))
        )
        .into_bytes();
        let mut fut = Box::pin(tidewall::fs::write_atomic(&rt, &path, new.clone()));
        let polls = rng.below_or_equal(10);
        let mut done = false;
        for _ in 0..polls {
            if let Poll::Ready(r) = fut.as_mut().poll(&mut cx()) {
                r.unwrap();
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_micros(rng.below_or_equal(2000))).await;
        }
        drop(fut);
        // Detached blocking steps end on their own: wait for exactly those, however slow the
        // machine (a bound only on hanging).
        tokio::time::timeout(Duration::from_secs(60), rt.settle())
            .await
            .expect("a detached blocking step never ended");
        let now = std::fs::read(&path).unwrap();
        // "dropping the future at any await point leaves the old file or the complete new one.
        // Before the rename, the temporary file is removed on drop"
        assert!(
            now == current || now == new,
            "gen {generation}: partial contents"
        );
        if done {
            assert_eq!(now, new);
        }
        current = now;
        assert_eq!(
            dir_entries(dir.path()),
            std::slice::from_ref(&path),
            "gen {generation} ({polls} polls): a stray temporary file"
        );
    }
}

// =============================================================================================
// More of follow_on: replacements the follower must tell apart, backlogs across a rotation.
// =============================================================================================

async fn follow_replacements<R: Runtime>(rt: R) {
    let p = ms(100);
    let dir = tempfile::tempdir().unwrap();

    // A new file with the very same contents (and size) as the one rotated away.
    let path = dir.path().join("a.log");
    std::fs::write(&path, "same\n").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, true).unwrap();
    assert_eq!(line(&rt, &mut f, p * 20).await, b"same");
    assert!(drain(&rt, &mut f, p).await.is_empty());
    std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
    std::fs::write(&path, "same\n").unwrap();
    // "Rotation is recognised by inode" / "then the file now at the path is read from its
    // start."
    assert_eq!(
        line(&rt, &mut f, p * 20).await,
        b"same",
        "same-size rotation"
    );
    // A new file that starts with the same bytes and is longer.
    std::fs::rename(&path, dir.path().join("a.log.2")).unwrap();
    std::fs::write(&path, "same\nmore\n").unwrap();
    assert_eq!(
        line(&rt, &mut f, p * 20).await,
        b"same",
        "same-prefix rotation"
    );
    assert_eq!(line(&rt, &mut f, p * 20).await, b"more");

    // A writer that keeps the old file open writes to it after the rename, before any check.
    let path = dir.path().join("b.log");
    std::fs::write(&path, "").unwrap();
    let mut writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    writer.write_all(b"one\n").unwrap();
    assert_eq!(line(&rt, &mut f, p * 20).await, b"one");
    assert!(drain(&rt, &mut f, p).await.is_empty());
    rt.sleep(ms(1)).await;
    std::fs::rename(&path, dir.path().join("b.log.1")).unwrap();
    writer.write_all(b"after rename\n").unwrap();
    std::fs::write(&path, "new file\n").unwrap();
    // "Bytes written to the old file after its rename (by a writer that still has it open) are
    // read if they land before the check that notices the rename"
    assert_eq!(line(&rt, &mut f, p * 20).await, b"after rename");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"new file");

    // Deleted (not renamed), then created again.
    let path = dir.path().join("c.log");
    std::fs::write(&path, "x\n").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    append(&path, b"\n\ny\n");
    // "yields each complete line appended to it": empty lines are lines.
    assert_eq!(line(&rt, &mut f, p * 20).await, b"");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"y");
    std::fs::remove_file(&path).unwrap();
    assert!(drain(&rt, &mut f, p).await.is_empty());
    std::fs::write(&path, "reborn\n").unwrap();
    // "A missing file is waited for, and read from its start when it appears."
    assert_eq!(line(&rt, &mut f, p * 20).await, b"reborn");

    // A file shorter than 64 bytes at the start, rewritten longer right after the build.
    let path = dir.path().join("d.log");
    std::fs::write(&path, "ab\n").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    std::fs::write(&path, "xy\nanother line\n").unwrap();
    // "or when the (up to) 64 bytes before that point are no longer the ones read there; the
    // file is then read again from its start."
    assert_eq!(line(&rt, &mut f, p * 20).await, b"xy");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"another line");
}

#[test]
fn follow_tells_same_content_rotations_late_writes_deletions_and_short_rewrites_apart() {
    on_every_runtime!(follow_replacements);
}

fn numbered_block(from: u32, bytes: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut data = Vec::new();
    let mut lines = Vec::new();
    let mut n = from;
    while data.len() < bytes {
        let l = format!(
            "block line {n:08} {}",
            "q".repeat(to_usize(u64::from(n % 50)))
        );
        data.extend(l.as_bytes());
        data.push(b'\n');
        lines.push(l.into_bytes());
        n += 1;
    }
    (data, lines)
}

async fn follow_backlog_then_rotation<R: Runtime>(rt: R) {
    let p = ms(100);
    let dir = tempfile::tempdir().unwrap();
    for poll_first in [false, true] {
        let path = dir.path().join(format!("big-{poll_first}.log"));
        std::fs::write(&path, "start\n").unwrap();
        let mut f = follow_on(&rt, &path, p, 256, false).unwrap();
        assert!(drain(&rt, &mut f, p).await.is_empty());
        let (data, want) = numbered_block(0, 3 << 20);
        append(&path, &data);
        let mut got = Vec::new();
        if poll_first {
            // One check has read its (at most) 1 MiB; the rest is still waiting.
            got.push(line(&rt, &mut f, p * 20).await);
        }
        std::fs::rename(&path, dir.path().join(format!("big-{poll_first}.log.1"))).unwrap();
        std::fs::write(&path, "after rotation\n").unwrap();
        got.extend(drain(&rt, &mut f, p).await);
        let mut want = want;
        want.push(b"after rotation".to_vec());
        // "each check looks at the path *before* it reads the open file to its end, so every
        // byte written to the old file before its rename is read before the old file is let go;
        // then the file now at the path is read from its start."
        assert_eq!(got.len(), want.len(), "poll_first {poll_first}");
        assert!(got == want, "poll_first {poll_first}: lines differ");
    }
}

#[test]
fn follow_reads_a_multi_megabyte_backlog_of_a_rotated_file_before_the_new_file() {
    on_every_runtime!(follow_backlog_then_rotation);
}

#[tokio::test(start_paused = true)]
async fn follow_line_limit_exactly_and_one_past_across_check_boundaries() {
    let p = ms(100);
    let max = 3000usize;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "").unwrap();
    let mut f = follow_on(&Tokio, &path, p, max, true).unwrap();
    let mut rng = SplitMix64::new(2024);
    let mut data = Vec::new();
    let mut want: Vec<Option<Vec<u8>>> = Vec::new(); // None: an InvalidData error
    let mut n = 0u32;
    while data.len() < (4 << 20) {
        let len = match rng.below_or_equal(4) {
            0 => max,
            1 => max + 1,
            2 => max - 1,
            3 => 0,
            _ => to_usize(rng.below_or_equal(100)),
        };
        let mut l = format!("{n:07}").into_bytes();
        l.resize(len.max(7), b'k');
        l.truncate(len);
        n += 1;
        data.extend(&l);
        data.push(b'\n');
        want.push(if l.len() <= max { Some(l) } else { None });
    }
    append(&path, &data);
    let mut got = Vec::new();
    while got.len() < want.len() {
        match tokio::time::timeout(p * 20, f.next()).await {
            Ok(Some(Ok(l))) => got.push(Some(l)),
            Ok(Some(Err(e))) => {
                assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                got.push(None);
            }
            Ok(None) => panic!("ended"),
            Err(_) => break,
        }
    }
    // "A line longer than `max_line` bytes is delivered as an `InvalidData` error and skipped."
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "item {first_diff:?} differs");
    assert_eq!(got.len(), want.len());
    assert!(tokio::time::timeout(p * 10, f.next()).await.is_err());
}

#[test]
fn follow_on_config_edges_are_typed_and_u64_nanosecond_periods_work() {
    use tidewall::ConfigError;
    use tidewall::stream::MAX_BUFFER;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "a\n").unwrap();
    // "ConfigError::OutOfRange for a max_line past MAX_BUFFER"
    assert!(matches!(
        follow_on(&Tokio, &path, ms(10), MAX_BUFFER + 1, true),
        Err(ConfigError::OutOfRange { .. })
    ));
    assert!(matches!(
        follow_on(&Tokio, &path, ms(10), usize::MAX, true),
        Err(ConfigError::OutOfRange { .. })
    ));
    // "ConfigError::DurationOverflow for a period beyond u64 nanoseconds (about 584 years)"
    assert!(matches!(
        follow_on(&Tokio, &path, Duration::MAX, 64, true),
        Err(ConfigError::DurationOverflow { .. })
    ));
    assert!(matches!(
        follow_on(
            &Tokio,
            &path,
            Duration::from_nanos(u64::MAX) + Duration::from_nanos(1),
            64,
            true
        ),
        Err(ConfigError::DurationOverflow { .. })
    ));
    // At the limits: accepted.
    let mut f = follow_on(
        &Tokio,
        &path,
        Duration::from_nanos(u64::MAX),
        MAX_BUFFER,
        true,
    )
    .expect("a period of u64::MAX nanoseconds and a max_line of MAX_BUFFER are valid");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        assert_eq!(
            tokio::time::timeout(ms(1000), f.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
            b"a"
        );
        // The next check is 584 years away: nothing, and no panic.
        append(&path, b"b\n");
        assert!(tokio::time::timeout(YEAR * 100, f.next()).await.is_err());
    });
}

#[test]
fn interval_with_a_period_of_u64_max_nanoseconds_ticks_after_585_virtual_years() {
    // "ConfigError::DurationOverflow for one beyond u64 nanoseconds (about 584 years)": u64::MAX
    // nanoseconds is valid, and its first tick is "one period after the interval was created".
    let p = Duration::from_nanos(u64::MAX);
    for mode in [MissedTicks::Burst, MissedTicks::Skip, MissedTicks::Delay] {
        let clock = FakeClock::new();
        let start = clock.now();
        let mut t = ticks(&clock, p, mode);
        assert!(poll_tick(&mut t).is_pending());
        clock.advance(YEAR * 500);
        assert!(
            poll_tick(&mut t).is_pending(),
            "{mode:?}: a tick after 500 years"
        );
        clock.advance_to(start + p);
        assert_eq!(poll_tick(&mut t), Poll::Ready(Some(start + p)), "{mode:?}");
    }
}

#[test]
fn interval_delay_first_tick_asked_late_restarts_the_schedule() {
    let p = ms(100);
    let clock = FakeClock::new();
    let start = clock.now();
    let mut t = ticks(&clock, p, MissedTicks::Delay);
    // Created at 0, first asked for at 130 ms.
    clock.advance_to(start + ms(130));
    assert!(matches!(poll_tick(&mut t), Poll::Ready(Some(_))));
    // "Any lateness of the consumer restarts it" / "the next tick is one period after this
    // delivery"
    expect_tick_at(&mut t, &clock, start, ms(230), "after a late first tick");
    expect_tick_at(&mut t, &clock, start, ms(330), "after a late first tick");
}

async fn timeout_each_years<R: Runtime>(rt: R) {
    let mut n = 0u32;
    let source = stream::poll_fn(move |_| {
        n += 1;
        Poll::Ready(if n <= 4 { Some(n) } else { None })
    });
    let mut s = std::pin::pin!(source.timeout_each_on(&rt, ms(10)).unwrap());
    let mut got = Vec::new();
    while let Some(item) = s.next().await {
        // "The consumer's own time with an item is never counted."
        got.push(item.expect("Elapsed for a slow consumer"));
        rt.sleep(YEAR * 2).await;
    }
    assert_eq!(got, [1, 2, 3, 4]);
}

#[test]
fn timeout_each_never_blames_a_consumer_away_for_years_on_every_runtime() {
    on_every_runtime!(timeout_each_years);
}

// =============================================================================================
// More of write_atomic: permissions, links, non-UTF-8 names.
// =============================================================================================

async fn write_atomic_modes_and_links<R: Runtime>(rt: R) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mode_of = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    for mode in [0o777, 0o4755, 0o2755, 0o6711, 0o600, 0o000] {
        let path = dir.path().join(format!("m{mode:o}"));
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let set = mode_of(&path);
        tidewall::fs::write_atomic(&rt, &path, b"new".to_vec())
            .await
            .unwrap_or_else(|e| panic!("mode {mode:o}: {e}"));
        if mode & 0o400 != 0 {
            assert_eq!(std::fs::read(&path).unwrap(), b"new");
        }
        // "carrying over the old file's permissions: set when the file is created and again
        // after the contents are written, since a write by a process without CAP_FSETID clears
        // the setuid and setgid bits (which then survive as far as the OS lets the writer set
        // them)"
        assert_eq!(mode_of(&path), set, "mode {mode:o} (as set: {set:o})");
    }
    // A link: replaced by a regular file with the permissions of the file it pointed to.
    let target = dir.path().join("target");
    std::fs::write(&target, b"target contents").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    tidewall::fs::write_atomic(&rt, &link, b"through the link".to_vec())
        .await
        .unwrap();
    // "a path that is a link is replaced by a regular file (the link's target is left as it
    // was), with the permissions of the file the link pointed to."
    let meta = std::fs::symlink_metadata(&link).unwrap();
    assert!(meta.file_type().is_file(), "still a link");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
    assert_eq!(std::fs::read(&link).unwrap(), b"through the link");
    assert_eq!(std::fs::read(&target).unwrap(), b"target contents");
    // A dangling link: replaced by a regular file too.
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    tidewall::fs::write_atomic(&rt, &dangling, b"d".to_vec())
        .await
        .unwrap();
    assert!(
        std::fs::symlink_metadata(&dangling)
            .unwrap()
            .file_type()
            .is_file()
    );
    assert!(
        !dir.path().join("nowhere").exists(),
        "the link's target was created"
    );
}

#[test]
fn write_atomic_keeps_special_mode_bits_and_replaces_links_on_every_runtime() {
    on_every_runtime!(write_atomic_modes_and_links);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_atomic_with_a_255_byte_name_that_is_not_utf8() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = tempfile::tempdir().unwrap();
    // Truncated 4-byte sequences and lone continuation bytes: no character boundaries at all.
    let mut raw = Vec::new();
    while raw.len() < 255 {
        raw.extend([0xF0u8, 0x9F, 0xA6, 0x80, 0x80]);
    }
    raw.truncate(255);
    let name = std::ffi::OsStr::from_bytes(&raw);
    let path = dir.path().join(name);
    // "so names near the file system's limit fit."
    tidewall::fs::write_atomic(&Tokio, &path, b"bytes".to_vec())
        .await
        .expect("a 255-byte name that is not UTF-8");
    assert_eq!(std::fs::read(&path).unwrap(), b"bytes");
    assert_eq!(dir_entries(dir.path()), [path]);
}

// =============================================================================================
// More of BlockingReader: a pipe delivers what it has.
// =============================================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_reader_on_a_pipe_delivers_what_it_has_without_waiting_for_a_chunk() {
    // The writer blocks on the test, not on time: it writes two lines, then waits for its
    // stdin to close, which the test does only once those two lines came out. A reader that
    // waited for a whole chunk (or for the end) would never see them: no timing involved.
    let mut child = std::process::Command::new("sh")
        .args(["-c", "printf 'a\\nb\\n'; read x; printf 'c\\n'"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let hold = child.stdin.take().unwrap();
    let out = child.stdout.take().unwrap();
    let reader = BlockingReader::new(Tokio, out, 1 << 20).unwrap();
    let mut lines = LineReader::new(reader, 1 << 20, 1024, Overlong::Error).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        // "A pipe delivers what it has" / "a slow writer is never waited on for a whole
        // chunk": the writer sends nothing more until the test lets it, so a batch comes only
        // from what it has already written (the timeout bounds a hang, nothing else).
        let b = tokio::time::timeout(Duration::from_secs(60), lines.next_batch())
            .await
            .expect("the first lines waited for more from a writer that was waiting on us")
            .unwrap()
            .expect("ended early");
        got.extend(b.lines().map(<[u8]>::to_vec));
    }
    // The writer may go on now.
    drop(hold);
    while let Some(b) = lines.next_batch().await.unwrap() {
        got.extend(b.lines().map(<[u8]>::to_vec));
    }
    assert_eq!(got, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    child.wait().unwrap();
}

// =============================================================================================
// More of DirWatch: the per-batch path cap, other runtimes.
// =============================================================================================

#[test]
fn dir_watch_batch_never_holds_more_than_65536_paths() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let dir_path = dir.path().canonicalize().unwrap();
        let mut watch = watch_dir_on(&Tokio, &dir_path, Duration::from_secs(8)).unwrap();
        let total = 70_000u32;
        let maker = std::thread::spawn({
            let dir_path = dir_path.clone();
            move || {
                for i in 0..total {
                    std::fs::write(dir_path.join(format!("f{i}")), b"").unwrap();
                }
            }
        });
        let mut batches = Vec::new();
        while let Ok(Some(batch)) =
            tokio::time::timeout(Duration::from_secs(12), watch.next()).await
        {
            let batch = batch.unwrap();
            let done = maker.is_finished();
            batches.push(batch);
            if done {
                break;
            }
        }
        maker.join().unwrap();
        for b in &batches {
            // "a batch holds at most 65,536 distinct paths; past either, the rest are dropped
            // and the batch is marked `overflowed`"
            assert!(
                b.paths.len() <= 65_536,
                "a batch of {} paths",
                b.paths.len()
            );
        }
        let seen: std::collections::BTreeSet<&PathBuf> =
            batches.iter().flat_map(|b| &b.paths).collect();
        if seen.len() < to_usize(u64::from(total)) {
            assert!(
                batches.iter().any(|b| b.overflowed),
                "{} of {total} paths reported and no batch says some were dropped",
                seen.len()
            );
        }
    });
}

#[test]
fn dir_watch_reports_a_change_on_smol_and_async_std() {
    let check = |changes: Option<tidewall::stream::DirChanges>, path: &Path| {
        // A bound on a hang (the change is due within a 50 ms period), no more.
        let changes = changes.expect("no batch within 30 s");
        // "The paths that changed (created, modified, removed, renamed [...])"
        assert!(changes.paths.iter().any(|p| p == path), "{changes:?}");
    };
    let smol = tidewall::rt::SmolRuntime::single_threaded();
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().canonicalize().unwrap();
    let mut watch = watch_dir_on(&smol.handle(), &dir_path, ms(50)).unwrap();
    let path = dir_path.join("on-smol");
    std::fs::write(&path, "x").unwrap();
    let got = smol.block_on(async {
        let timeout = async {
            smol::Timer::after(Duration::from_secs(30)).await;
            None
        };
        let next = async { Some(watch.next().await.unwrap().unwrap()) };
        select(std::pin::pin!(next), std::pin::pin!(timeout))
            .await
            .factor_first()
            .0
    });
    check(got, &path);
    let dir = tempfile::tempdir().unwrap();
    let dir_path = dir.path().canonicalize().unwrap();
    let got = async_std::task::block_on(async {
        let mut watch = watch_dir_on(&tidewall::rt::AsyncStd, &dir_path, ms(50)).unwrap();
        std::fs::write(dir_path.join("on-async-std"), "x").unwrap();
        async_std::future::timeout(Duration::from_secs(30), watch.next())
            .await
            .ok()
            .map(|b| b.unwrap().unwrap())
    });
    check(got, &dir_path.join("on-async-std"));
}

// =============================================================================================
// follow_on: the file opened by the build is the one followed.
// =============================================================================================

async fn follow_file_opened_at_build<R: Runtime>(rt: R) {
    let p = ms(100);
    let dir = tempfile::tempdir().unwrap();

    // from_start, renamed away right after the build: the file opened then is read first.
    let path = dir.path().join("a.log");
    std::fs::write(&path, "old 1\nold 2\n").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, true).unwrap();
    std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
    std::fs::write(&path, "new\n").unwrap();
    // "building it opens the file on the calling thread [...] at its start with `from_start`"
    // / "the guarantees above hold from then on": "every byte written to the old file before
    // its rename is read before the old file is let go; then the file now at the path is read
    // from its start."
    assert_eq!(line(&rt, &mut f, p * 20).await, b"old 1");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"old 2");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"new");

    // from_start, deleted right after the build.
    let path = dir.path().join("b.log");
    std::fs::write(&path, "kept\n").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, true).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(line(&rt, &mut f, p * 20).await, b"kept");

    // From the end: an append, then a deletion, both before the first poll.
    let path = dir.path().join("c.log");
    std::fs::write(&path, "before\n").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    append(&path, b"appended\n");
    std::fs::remove_file(&path).unwrap();
    // "So lines appended as soon as follow_on returns are delivered"
    assert_eq!(line(&rt, &mut f, p * 20).await, b"appended");
    std::fs::write(&path, "recreated\n").unwrap();
    // "A missing file is waited for, and read from its start when it appears."
    assert_eq!(line(&rt, &mut f, p * 20).await, b"recreated");
}

#[test]
fn follow_reads_the_file_it_opened_when_built_even_if_replaced_before_the_first_poll() {
    on_every_runtime!(follow_file_opened_at_build);
}

async fn follow_partial_lines_across_replacements<R: Runtime>(rt: R) {
    let p = ms(100);
    let dir = tempfile::tempdir().unwrap();

    // A held partial line completed before the rename: it was written before the rename.
    let path = dir.path().join("a.log");
    std::fs::write(&path, "a\npar").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, true).unwrap();
    assert_eq!(line(&rt, &mut f, p * 20).await, b"a");
    assert!(drain(&rt, &mut f, p).await.is_empty());
    append(&path, b"tial\n");
    std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
    std::fs::write(&path, "b\n").unwrap();
    // "every byte written to the old file before its rename is read before the old file is
    // let go" / "A partial last line is held until its newline arrives"
    assert_eq!(line(&rt, &mut f, p * 20).await, b"partial");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"b");

    // An overlong partial line reported, then the file rotated before its newline.
    let path = dir.path().join("b.log");
    std::fs::write(&path, "").unwrap();
    let mut f = follow_on(&rt, &path, p, 8, true).unwrap();
    append(&path, &[b'x'; 20]);
    let e = within(&rt, p * 20, f.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    // "A line longer than `max_line` bytes is delivered as an `InvalidData` error and skipped."
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    std::fs::rename(&path, dir.path().join("b.log.1")).unwrap();
    std::fs::write(&path, "fresh\n").unwrap();
    // "a partial last line left in a file that was rotated or truncated is dropped" / "the
    // file now at the path is read from its start": its first line is not the skipped one.
    assert_eq!(line(&rt, &mut f, p * 20).await, b"fresh");

    // The same with truncation in place.
    let path = dir.path().join("c.log");
    std::fs::write(&path, "").unwrap();
    let mut f = follow_on(&rt, &path, p, 8, true).unwrap();
    append(&path, &[b'x'; 20]);
    let e = within(&rt, p * 20, f.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    std::fs::write(&path, "new\n").unwrap();
    // "the file is then read again from its start"
    assert_eq!(line(&rt, &mut f, p * 20).await, b"new");
}

#[test]
fn follow_partial_and_overlong_lines_do_not_leak_across_a_rotation_or_truncation() {
    on_every_runtime!(follow_partial_lines_across_replacements);
}

// =============================================================================================
// DirWatch: debouncing and recursion.
// =============================================================================================

#[test]
fn dir_watch_gathers_a_debounce_window_into_one_batch_and_watches_new_subdirectories() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let mut watch = watch_dir_on(&Tokio, &root, ms(1500)).unwrap();
        let writer = tokio::spawn({
            let root = root.clone();
            async move {
                std::fs::write(root.join("one"), "1").unwrap();
                tokio::time::sleep(ms(300)).await;
                std::fs::write(root.join("two"), "2").unwrap();
            }
        });
        let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("no batch")
            .unwrap()
            .unwrap();
        writer.await.unwrap();
        // "after the first change, everything within `debounce` is gathered into one
        // DirChanges"
        assert!(
            first.paths.contains(&root.join("one")) && first.paths.contains(&root.join("two")),
            "{first:?}"
        );
        // "Watches `dir` (recursively)": a directory created under it is watched too.
        std::fs::create_dir(root.join("sub")).unwrap();
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut wrote = false;
        while !seen.contains(&root.join("sub").join("deep")) {
            assert!(std::time::Instant::now() < deadline, "saw only {seen:?}");
            if let Ok(Some(batch)) = tokio::time::timeout(ms(2500), watch.next()).await {
                seen.extend(batch.unwrap().paths);
            }
            if !wrote {
                std::fs::write(root.join("sub").join("deep"), "d").unwrap();
                wrote = true;
            }
        }
    });
}
#[test]
fn interval_next_dropped_then_asked_late_delivers_the_awaited_tick_then_follows_its_mode() {
    let p = ms(100);
    for mode in [MissedTicks::Burst, MissedTicks::Skip, MissedTicks::Delay] {
        for late in [ms(0), ms(30), ms(99), ms(100), ms(250)] {
            if mode == MissedTicks::Delay && late > ms(0) && late < p {
                continue; // see interval_delay_consumer_late_after_dropping_next_restarts_the_schedule
            }
            let what = format!("{mode:?} asked {late:?} late");
            let clock = FakeClock::new();
            let start = clock.now();
            let mut t = ticks(&clock, p, mode);
            expect_tick_at(&mut t, &clock, start, p, &what);
            {
                let mut next = t.next();
                assert!(Pin::new(&mut next).poll(&mut cx()).is_pending());
                clock.advance_to(start + ms(150));
                assert!(Pin::new(&mut next).poll(&mut cx()).is_pending());
            } // dropped while waiting for the tick due at 200 ms
            clock.advance_to(start + p * 2 + late);
            let asked = clock.now();
            // "Cancel safety: dropping a next() future loses no tick: the tick it waited for is
            // the next one delivered." / "each item is the tick's scheduled instant"
            assert_eq!(
                poll_tick(&mut t),
                Poll::Ready(Some(start + p * 2)),
                "{what}"
            );
            match mode {
                // "Deliver every missed tick at once, then continue on the original schedule"
                MissedTicks::Burst => {
                    let mut k = 3u32;
                    while start + p * k <= asked {
                        assert_eq!(
                            poll_tick(&mut t),
                            Poll::Ready(Some(start + p * k)),
                            "{what}"
                        );
                        k += 1;
                    }
                    expect_tick_at(&mut t, &clock, start, p * k, &what);
                }
                // "the next tick is the first point of the original schedule after the late one
                // was delivered"
                MissedTicks::Skip => {
                    let mut k = 3u32;
                    while start + p * k <= asked {
                        k += 1;
                    }
                    expect_tick_at(&mut t, &clock, start, p * k, &what);
                }
                // "Any lateness of the consumer restarts it" (none: on time restarts to the same
                // point)
                _ => expect_tick_at(&mut t, &clock, start, asked - start + p, &what),
            }
        }
    }
}

async fn follow_check_timing<R: Runtime>(rt: R) {
    let p = ms(100);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "first\n").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, true).unwrap();
    let t0 = rt.now();
    assert_eq!(line(&rt, &mut f, p * 20).await, b"first");
    // "the first is started by the first poll"
    assert_eq!(rt.now(), t0, "the first check waited");
    assert!(drain(&rt, &mut f, p).await.is_empty());
    // A consumer away for longer than a period: its next poll checks at once.
    rt.sleep(p * 10).await;
    append(&path, b"second\n");
    let asked = rt.now();
    assert_eq!(line(&rt, &mut f, p * 20).await, b"second");
    // "each next one by a poll that comes `period` or more after the previous one's result was
    // taken"
    assert_eq!(
        rt.now(),
        asked,
        "a poll {:?} after the last check waited",
        p * 10
    );
    // A rotation: the check that notices it lets the old file go and reads the new one at once.
    assert!(drain(&rt, &mut f, p).await.is_empty());
    std::fs::rename(&path, dir.path().join("a.log.1")).unwrap();
    std::fs::write(&path, "third\n").unwrap();
    let asked = rt.now();
    assert_eq!(line(&rt, &mut f, p * 20).await, b"third");
    // "or at once when that check [...] let a rotated or truncated file go"
    assert!(
        rt.now() - asked <= p,
        "the new file waited {:?}",
        rt.now() - asked
    );
    assert!(drain(&rt, &mut f, p).await.is_empty());
    std::fs::write(&path, "4\n").unwrap(); // truncated in place, shorter
    let asked = rt.now();
    assert_eq!(line(&rt, &mut f, p * 20).await, b"4");
    assert!(
        rt.now() - asked <= p,
        "the truncated file waited {:?}",
        rt.now() - asked
    );

    // An I/O error: delivered as an item, then the next check a period later (no busy loop).
    let bad = dir.path().join("dir.log");
    std::fs::create_dir(&bad).unwrap();
    let mut f = follow_on(&rt, &bad, p, 64, true).unwrap();
    let start = rt.now();
    let mut errors = Vec::new();
    while rt.now() - start < p * 10 {
        match within(&rt, p * 20, f.next()).await {
            Some(Some(Err(_))) => errors.push(rt.now() - start),
            other => panic!("expected error items: {other:?}"),
        }
    }
    // "An I/O error is delivered as an item, and the follower checks again a period later."
    for pair in errors.windows(2) {
        assert!(
            pair[1] - pair[0] >= p,
            "errors {:?} apart: {errors:?}",
            pair[1] - pair[0]
        );
    }
}

#[test]
fn follow_checks_at_once_after_idleness_or_a_replacement_and_a_period_after_an_error() {
    on_every_runtime!(follow_check_timing);
}

async fn follow_mid_line_empty_rest<R: Runtime>(rt: R) {
    let p = ms(100);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "x\npart").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    append(&path, b"\nnext\n");
    // "the rest of that line is skipped: the first line delivered is the first that starts
    // after the follower's start" — the rest is empty; it is not an empty line.
    assert_eq!(line(&rt, &mut f, p * 20).await, b"next");
    // The newline alone, in a check of its own.
    let path = dir.path().join("b.log");
    std::fs::write(&path, "x\npart").unwrap();
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    append(&path, b"\n");
    assert!(
        drain(&rt, &mut f, p).await.is_empty(),
        "the skipped rest came out"
    );
    append(&path, b"\nafter an empty line\n");
    // An empty line that starts after the start is a line.
    assert_eq!(line(&rt, &mut f, p * 20).await, b"");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"after an empty line");
}

#[test]
fn follow_started_just_before_a_newline_skips_only_that_newline() {
    on_every_runtime!(follow_mid_line_empty_rest);
}

async fn batch_years<R: Runtime>(rt: R) {
    let (tx, rx) = futures_channel::mpsc::unbounded::<u32>();
    let mut b = std::pin::pin!(rx.batch_on(&rt, 100, ms(50)).unwrap());
    let start = rt.now();
    tx.unbounded_send(1).unwrap();
    tx.unbounded_send(2).unwrap();
    // "emitting a batch early once `max_wait` has passed since its first item"
    assert_eq!(b.next().await, Some(vec![1, 2]));
    assert_eq!(rt.now() - start, ms(50));
    // Years with nothing: no empty batches, and the next batch's clock starts at its own first
    // item.
    assert!(
        within(&rt, YEAR * 3, b.next()).await.is_none(),
        "a batch from nothing"
    );
    let again = rt.now();
    tx.unbounded_send(3).unwrap();
    assert_eq!(b.next().await, Some(vec![3]));
    assert_eq!(
        rt.now() - again,
        ms(50),
        "max_wait counted from before the first item"
    );
    drop(tx);
    // "or when the stream ends (with what it holds)"
    assert_eq!(b.next().await, None);
}

#[test]
fn batch_after_years_of_idleness_times_from_its_first_item_on_every_runtime() {
    on_every_runtime!(batch_years);
}

#[test]
fn watch_dir_on_debounce_limits_are_typed() {
    use tidewall::stream::WatchError;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        // "WatchError::Config for a zero debounce or one beyond u64 nanoseconds (about 584
        // years)"
        for bad in [
            Duration::ZERO,
            Duration::from_nanos(u64::MAX) + Duration::from_nanos(1),
            Duration::MAX,
        ] {
            assert!(
                matches!(
                    watch_dir_on(&Tokio, dir.path(), bad),
                    Err(WatchError::Config(_))
                ),
                "{bad:?}"
            );
        }
        assert!(watch_dir_on(&Tokio, dir.path(), Duration::from_nanos(u64::MAX)).is_ok());
        assert!(watch_dir_on(&Tokio, dir.path(), Duration::from_nanos(1)).is_ok());
    });
}

#[tokio::test(start_paused = true)]
async fn interval_delay_consumer_back_within_a_period_after_dropping_next_keeps_the_schedule() {
    // A select loop: another branch wins while the interval's next() waits, the consumer works
    // past the tick's time, then asks again.
    let p = ms(100);
    for busy in [ms(30), ms(99)] {
        let start = Tokio.now();
        let mut t = std::pin::pin!(interval_on(&Tokio, p, MissedTicks::Delay).unwrap());
        assert_eq!(t.next().await, Some(start + p));
        tokio::select! {
            biased;
            tick = t.next() => panic!("a tick at 150 ms: {tick:?}"),
            () = tokio::time::sleep(ms(50)) => {} // a message at 150 ms wins; next() dropped
        }
        tokio::time::sleep(ms(50) + busy).await; // handling it until 200 ms + busy
        let asked = Tokio.now();
        // "Cancel safety: dropping a next() future loses no tick: the tick it waited for is the
        // next one delivered."
        assert_eq!(t.next().await, Some(start + p * 2));
        assert_eq!(Tokio.now(), asked);
        let next = t.next().await.unwrap();
        // "A consumer counts as waiting from a poll that found the tick not yet due: one that
        // dropped that `next()` (a `select!` whose other branch won) and asks again less than
        // a period after the tick keeps the schedule too".
        assert_eq!(
            (next - start, Tokio.now() - start),
            (p * 3, p * 3),
            "a consumer {busy:?} late (after dropping next()) restarted the schedule"
        );
    }
}

// =============================================================================================
// follow_on: rotations, deletions and truncations at any step, with no pause between them.
// =============================================================================================

/// What became of the lines written while one file (or one truncation-delimited stretch of a
/// file) was at the path.
#[derive(Debug)]
enum Fate {
    /// Renamed or deleted: read to its end if the follower ever had it open, else unseen.
    AllOrNothing,
    /// Truncated in place: the lines read before the truncation was noticed; the rest is gone.
    Prefix,
    /// Still at the path at the end: every line.
    All,
}

fn check_generations(got: &[Vec<u8>], generations: &[(Fate, Vec<Vec<u8>>)]) -> Result<(), String> {
    let mut at = 0;
    for (g, (fate, lines)) in generations.iter().enumerate() {
        let matching = lines
            .iter()
            .zip(&got[at.min(got.len())..])
            .take_while(|(a, b)| a == b)
            .count();
        let ok = match fate {
            Fate::AllOrNothing => matching == 0 || matching == lines.len(),
            Fate::Prefix => true,
            Fate::All => matching == lines.len(),
        };
        if !ok {
            return Err(format!(
                "generation {g} ({fate:?}, {} lines): {matching} delivered, then {:?}",
                lines.len(),
                got.get(at + matching)
                    .map(|l| String::from_utf8_lossy(l).into_owned())
            ));
        }
        at += matching;
    }
    if at != got.len() {
        return Err(format!(
            "{} lines delivered that were not written there or then: first {:?}",
            got.len() - at,
            String::from_utf8_lossy(&got[at])
        ));
    }
    Ok(())
}

async fn follow_chaos<R: Runtime>(rt: R, seed: u64) {
    let p = ms(40);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let mut rng = SplitMix64::new(seed);
    let mut id = 0u32;
    let mut make = |rng: &mut SplitMix64| {
        id += 1;
        let pad = "x".repeat(to_usize(rng.below_or_equal(20)));
        format!("c{seed}-{id:06}-{pad}").into_bytes()
    };
    std::fs::write(&path, "before the start\n").unwrap();
    let mut f = follow_on(&rt, &path, p, 256, false).unwrap();
    let mut generations: Vec<(Fate, Vec<Vec<u8>>)> = vec![(Fate::All, Vec::new())];
    let mut got = Vec::new();
    let mut steps = Vec::new();
    let mut generation = 0;
    for _ in 0..90 {
        let step = rng.below_or_equal(11);
        steps.push(step);
        match step {
            0..=3 => {
                let mut buf = Vec::new();
                for _ in 0..=rng.below_or_equal(3) {
                    let l = make(&mut rng);
                    generations.last_mut().unwrap().1.push(l.clone());
                    buf.extend(l);
                    buf.push(b'\n');
                }
                append(&path, &buf);
            }
            4 | 5 => {
                // Rotation (or deletion), then perhaps a new file right away.
                if path.exists() {
                    generation += 1;
                    if step == 4 {
                        std::fs::rename(&path, dir.path().join(format!("app.log.{generation}")))
                            .unwrap();
                    } else {
                        std::fs::remove_file(&path).unwrap();
                    }
                }
                generations.last_mut().unwrap().0 = Fate::AllOrNothing;
                generations.push((Fate::All, Vec::new()));
                if rng.below_or_equal(1) == 0 {
                    std::fs::write(&path, "").unwrap();
                }
            }
            6 => {
                // Truncation in place, then perhaps new lines.
                if path.exists() {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&path)
                        .unwrap();
                    generations.last_mut().unwrap().0 = Fate::Prefix;
                    generations.push((Fate::All, Vec::new()));
                }
            }
            7 | 8 => got.extend(drain(&rt, &mut f, p).await),
            _ => {
                for _ in 0..=rng.below_or_equal(3) {
                    let wait = ms(rng.below_or_equal(2 * 40));
                    match within(&rt, wait, f.next()).await {
                        Some(Some(Ok(l))) => got.push(l),
                        Some(Some(Err(e))) => panic!("seed {seed}: an error item: {e}"),
                        Some(None) => panic!("\"The stream never ends\", yet it ended"),
                        None => {}
                    }
                }
            }
        }
    }
    got.extend(drain(&rt, &mut f, p).await);
    // "every byte written to the old file before its rename is read before the old file is let
    // go; then the file now at the path is read from its start" / "If the path was replaced
    // more than once since the last check, the file the follower had open and the one now at
    // the path are read: the ones in between came and went unseen." / "Lines that were in the
    // file before the truncation and not yet read are gone with it" / "A missing file is waited
    // for, and read from its start when it appears."
    if let Err(e) = check_generations(&got, &generations) {
        panic!("seed {seed}: {e}; steps {steps:?}");
    }
}

#[test]
fn follow_through_seeded_rotations_and_truncations_at_any_step_keeps_each_files_lines() {
    for seed in 11..=30u64 {
        on_every_runtime!(|rt| follow_chaos(rt, seed));
    }
}

// =============================================================================================
// Backpressure of the merge and of par_map, on every runtime.
// =============================================================================================

#[test]
fn prioritized_holds_at_most_one_item_it_has_not_delivered() {
    for seed in 0..10u64 {
        let mut rng = SplitMix64::new(seed);
        let pulls = Arc::new(AtomicUsize::new(0));
        // Two sources that are ready or not at random, each pull counted.
        let side = |tag: u32, rng_seed: u64| {
            let pulls = Arc::clone(&pulls);
            let mut rng = SplitMix64::new(rng_seed);
            let mut n = 0u32;
            stream::poll_fn(move |cx| {
                if n == 200 {
                    return Poll::Ready(None);
                }
                if rng.below_or_equal(2) == 0 {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                n += 1;
                pulls.fetch_add(1, SeqCst);
                Poll::Ready(Some(tag * 1000 + n))
            })
        };
        let merged = side(1, seed * 2).prioritized(side(2, seed * 2 + 1));
        let mut merged: Pin<Box<dyn Stream<Item = u32>>> = if seed % 2 == 0 {
            Box::pin(merged)
        } else {
            Box::pin(
                merged
                    .low_at_least_every(1 + u32::try_from(rng.below_or_equal(3)).unwrap())
                    .unwrap(),
            )
        };
        let mut delivered = Vec::new();
        let done = block_on_spinning(async {
            while let Some(item) = merged.next().await {
                delivered.push(item);
                // "every operator holds a bounded amount (one batch, one item, `limit` in-flight
                // items) and stops pulling its source until its consumer takes what it holds"
                assert!(
                    pulls.load(SeqCst) <= delivered.len() + 1,
                    "seed {seed}: {} pulled, {} delivered",
                    pulls.load(SeqCst),
                    delivered.len()
                );
            }
            true
        });
        assert!(done);
        // "The merge ends when both streams have ended." — with every item.
        let mut sorted = delivered.clone();
        sorted.sort_unstable();
        let want: Vec<u32> = (1..=200)
            .map(|n| 1000 + n)
            .chain((1..=200).map(|n| 2000 + n))
            .collect();
        assert_eq!(sorted, want, "seed {seed}");
    }
}

async fn par_map_everywhere<R: Runtime>(rt: R) {
    let limit = 4usize;
    let pulls = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let source = {
        let pulls = Arc::clone(&pulls);
        stream::iter(0..40u64).inspect(move |_| {
            pulls.fetch_add(1, SeqCst);
        })
    };
    let work = {
        let rt = rt.clone();
        let running = Arc::clone(&running);
        let peak = Arc::clone(&peak);
        move |n: u64| {
            let rt = rt.clone();
            let running = Arc::clone(&running);
            let peak = Arc::clone(&peak);
            async move {
                let now = running.fetch_add(1, SeqCst) + 1;
                peak.fetch_max(now, SeqCst);
                rt.sleep(ms(10 + (n * 37) % 50)).await;
                running.fetch_sub(1, SeqCst);
                assert!(n % 13 != 5, "item {n} panics");
                n * 2
            }
        }
    };
    let mut out = std::pin::pin!(source.par_map_on(&rt, limit, work).unwrap());
    let mut got = Vec::new();
    let mut panicked = Vec::new();
    let mut k = 0u64;
    while let Some(r) = out.next().await {
        match r {
            Ok(v) => got.push(v),
            // "a panic arrives as `Err(JoinError::Panicked)`"
            Err(tidewall::rt::JoinError::Panicked(_)) => panicked.push(k),
            Err(e) => panic!("item {k}: {e:?}"),
        }
        // "at most `limit` items are taken and not yet delivered, and the source is pulled only
        // when a slot is free"
        let delivered = to_usize(k) + 1;
        assert!(
            pulls.load(SeqCst) <= delivered + limit,
            "{} pulled, {delivered} delivered",
            pulls.load(SeqCst)
        );
        if k == 10 {
            // A busy consumer: "Work keeps running while the consumer is busy"
            rt.sleep(Duration::from_secs(1)).await;
            let back = rt.now();
            for _ in 0..limit {
                let r = out.next().await.unwrap();
                k += 1;
                match r {
                    Ok(v) => got.push(v),
                    Err(_) => panicked.push(k),
                }
            }
            assert_eq!(
                rt.now(),
                back,
                "the items taken during the pause were not worked on"
            );
        }
        k += 1;
    }
    // "at most `limit` at a time, delivering in input order"
    assert!(peak.load(SeqCst) <= limit, "peak {}", peak.load(SeqCst));
    let want: Vec<u64> = (0..40).filter(|n| n % 13 != 5).map(|n| n * 2).collect();
    assert_eq!(got, want);
    assert_eq!(panicked, [5, 18, 31]);
}

#[test]
fn par_map_bounds_orders_and_reports_panics_on_every_runtime() {
    on_every_runtime!(par_map_everywhere);
}

// =============================================================================================
// Panicking blocking work, on every runtime.
// =============================================================================================

/// A reader whose read number `panic_on` (from 1) panics; each read returns 5 bytes.
struct PanickyFile {
    reads: usize,
    panic_on: usize,
}

impl io::Read for PanickyFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        assert!(
            self.reads != self.panic_on,
            "read {} panics (on purpose)",
            self.reads
        );
        let n = buf.len().min(5);
        buf[..n].fill(b'p');
        Ok(n)
    }
}

async fn blocking_reader_panic<R: Runtime>(rt: R) {
    let mut r = BlockingReader::new(
        rt.clone(),
        PanickyFile {
            reads: 0,
            panic_on: 2,
        },
        5,
    )
    .unwrap();
    let mut buf = [0u8; 5];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ppppp");
    // "A read that panicked (or was cancelled by the runtime) loses the reader: that read and
    // every later one fail."
    for attempt in 0..3 {
        let e = r.read(&mut buf).await;
        assert!(e.is_err(), "attempt {attempt}: {e:?}");
    }
}

#[test]
fn blocking_reader_after_a_panicking_read_fails_every_later_read_on_every_runtime() {
    on_every_runtime!(blocking_reader_panic);
}

async fn write_atomic_panics<R: Runtime>(rt: R) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cfg");
    std::fs::write(&path, b"old").unwrap();
    let probe = PanicAt {
        inner: rt.clone(),
        calls: Arc::new(AtomicUsize::new(0)),
        fail_at: usize::MAX,
    };
    tidewall::fs::write_atomic(&probe, &path, b"old".to_vec())
        .await
        .unwrap();
    let steps = probe.calls.load(SeqCst);
    for fail_at in 0..steps {
        let failing = PanicAt {
            inner: rt.clone(),
            calls: Arc::new(AtomicUsize::new(0)),
            fail_at,
        };
        let r = tidewall::fs::write_atomic(&failing, &path, b"new contents".to_vec()).await;
        // "A blocking step that panicked ... is reported as an io::Error of kind Other"
        let e = r.expect_err("a panicking step is an error");
        assert!(e.kind() == io::ErrorKind::Other, "step {fail_at}: {e:?}");
        rt.sleep(ms(1)).await;
        let now = std::fs::read(&path).unwrap();
        // "an error up to the rename leaves the target untouched and the temporary file
        // removed"
        assert!(
            now == b"old" || now == b"new contents",
            "step {fail_at}: partial file"
        );
        let left = dir_entries(dir.path());
        assert_eq!(
            left,
            std::slice::from_ref(&path),
            "step {fail_at} of {steps}: stray files"
        );
        std::fs::write(&path, b"old").unwrap();
    }
}

#[test]
fn write_atomic_reports_a_panicking_blocking_step_as_an_error_on_every_runtime() {
    on_every_runtime!(write_atomic_panics);
}

#[derive(Clone)]
struct CountSpawns<R> {
    inner: R,
    spawns: Arc<AtomicUsize>,
    blocking: Arc<AtomicUsize>,
}

impl<R: tidewall::rt::Spawn> tidewall::rt::Spawn for CountSpawns<R> {
    type JoinHandle<T: Send + 'static> = R::JoinHandle<T>;

    fn spawn<F>(&self, fut: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawns.fetch_add(1, SeqCst);
        self.inner.spawn(fut)
    }

    fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.blocking.fetch_add(1, SeqCst);
        self.inner.spawn_blocking(work)
    }
}

impl<R: Clock> Clock for CountSpawns<R> {
    type Sleep = R::Sleep;
    fn now(&self) -> Instant {
        self.inner.now()
    }
    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        self.inner.sleep_until(deadline)
    }
}

async fn follow_spawn_accounting<R: Runtime>(rt: R) {
    let p = ms(100);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.log");
    std::fs::write(&path, "x\n").unwrap();
    let counted = CountSpawns {
        inner: rt.clone(),
        spawns: Arc::default(),
        blocking: Arc::default(),
    };
    let total = |c: &CountSpawns<R>| c.spawns.load(SeqCst) + c.blocking.load(SeqCst);
    let mut f = follow_on(&counted, &path, p, 64, false).unwrap();
    // "Building it needs no runtime (it spawns nothing)"
    assert_eq!(total(&counted), 0, "building spawned");
    // Not polled for years: "The file is looked at only while the stream is polled."
    append(&path, b"y\n");
    rt.sleep(YEAR * 2).await;
    assert_eq!(total(&counted), 0, "a check while not polled");
    // "Each check runs on a blocking task: the first is started by the first poll"
    assert_eq!(line(&counted, &mut f, p * 20).await, b"y");
    assert_eq!(counted.blocking.load(SeqCst), 1, "one check for one line");
    // Polled for 20 periods with nothing new: about one check a period, not a busy loop.
    let before = counted.blocking.load(SeqCst);
    assert!(within(&rt, p * 20, f.next()).await.is_none());
    let checks = counted.blocking.load(SeqCst) - before;
    // "each next one by a poll that comes `period` or more after the previous one's result was
    // taken"
    assert!(checks <= 21, "{checks} checks in 20 periods");
    assert!(checks >= 1, "no check at all in 20 periods");
}

#[test]
fn follow_spawns_nothing_until_polled_and_checks_once_a_period_on_every_runtime() {
    on_every_runtime!(follow_spawn_accounting);
}

async fn follow_odd_paths<R: Runtime>(rt: R) {
    let p = ms(100);
    let dir = tempfile::tempdir().unwrap();

    // The file's directory does not exist yet.
    let path = dir.path().join("later").join("app.log");
    let mut f = follow_on(&rt, &path, p, 64, false).unwrap();
    // "A missing file is waited for, and read from its start when it appears."
    assert!(
        within(&rt, p * 10, f.next()).await.is_none(),
        "a missing directory is not a missing file?"
    );
    std::fs::create_dir(dir.path().join("later")).unwrap();
    std::fs::write(&path, "appeared\n").unwrap();
    assert_eq!(line(&rt, &mut f, p * 20).await, b"appeared");

    // The path is a symbolic link, pointed at a new file (rotation by link).
    let link = dir.path().join("current.log");
    let one = dir.path().join("one.log");
    let two = dir.path().join("two.log");
    std::fs::write(&one, "1a\n").unwrap();
    std::os::unix::fs::symlink(&one, &link).unwrap();
    let mut f = follow_on(&rt, &link, p, 64, true).unwrap();
    assert_eq!(line(&rt, &mut f, p * 20).await, b"1a");
    assert!(drain(&rt, &mut f, p).await.is_empty());
    append(&one, b"1b\n");
    std::fs::write(&two, "2a\n").unwrap();
    let tmp = dir.path().join("current.tmp");
    std::os::unix::fs::symlink(&two, &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();
    // "each check looks at the path *before* it reads the open file to its end [...]; then
    // the file now at the path is read from its start." / "Rotation is recognised by inode"
    assert_eq!(line(&rt, &mut f, p * 20).await, b"1b");
    assert_eq!(line(&rt, &mut f, p * 20).await, b"2a");
}

#[test]
fn follow_waits_for_a_missing_directory_and_follows_a_repointed_link_on_every_runtime() {
    on_every_runtime!(follow_odd_paths);
}

#[tokio::test(start_paused = true)]
async fn interval_delay_on_tokio_keeps_a_period_that_the_timer_cannot_hit_exactly() {
    // tokio's timer fires on whole milliseconds: every wake-up of a 10.5 ms interval is late by
    // up to 1 ms.
    let p = Duration::from_micros(10_500);
    for mode in [MissedTicks::Delay, MissedTicks::Skip, MissedTicks::Burst] {
        let start = Tokio.now();
        let mut t = std::pin::pin!(interval_on(&Tokio, p, mode).unwrap());
        for k in 1..=200u32 {
            let tick = t.next().await.unwrap();
            // "a wake-up the consumer was already waiting for, made late by less than a period
            // (timer resolution, a busy executor), does not, so a consumer that is never late
            // keeps the schedule."
            assert_eq!(tick, start + p * k, "{mode:?}: tick {k}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn interval_jitter_merged_on_tokio_paused_wakes_exactly_as_alone() {
    let p = ms(50);
    for mode in [MissedTicks::Burst, MissedTicks::Skip, MissedTicks::Delay] {
        let start = Tokio.now();
        let mut alone = std::pin::pin!(
            interval_on(&Tokio, p, mode)
                .unwrap()
                .jitter(ms(40), 3)
                .unwrap()
        );
        let mut quiet = Vec::new();
        for _ in 0..40 {
            let tick = alone.next().await.unwrap();
            quiet.push((tick - start, Tokio.now() - start));
        }
        let start = Tokio.now();
        let jittered = interval_on(&Tokio, p, mode)
            .unwrap()
            .jitter(ms(40), 3)
            .unwrap()
            .map(Merged::Jittered);
        let busy = interval_on(&Tokio, ms(1), MissedTicks::Skip)
            .unwrap()
            .map(|_| Merged::Busy);
        // The busy stream first this time: it is polled, and wakes the task, before every poll
        // of the interval.
        let mut merged = std::pin::pin!(busy.prioritized(jittered));
        let mut noisy = Vec::new();
        while noisy.len() < 40 {
            if let Merged::Jittered(tick) = merged.next().await.unwrap() {
                noisy.push((tick - start, Tokio.now() - start));
            }
        }
        // "a consumer that asked for a tick in time gets it at its jittered wake-up, however
        // often its task is polled before then (by other streams merged or selected with this
        // one)"
        assert_eq!(noisy, quiet, "{mode:?}");
    }
}

#[test]
fn batch_whose_max_wait_passed_unpolled_is_emitted_without_pulling_more() {
    let clock = FakeClock::new();
    let (tx, rx) = futures_channel::mpsc::unbounded::<u32>();
    let pulls = Arc::new(AtomicUsize::new(0));
    let source = {
        let pulls = Arc::clone(&pulls);
        rx.inspect(move |_| {
            pulls.fetch_add(1, SeqCst);
        })
    };
    let mut b = Box::pin(source.batch_on(&clock, 100, ms(10)).unwrap());
    tx.unbounded_send(1).unwrap();
    assert!(
        b.as_mut().poll_next(&mut cx()).is_pending(),
        "a batch of one, waiting"
    );
    assert_eq!(pulls.load(SeqCst), 1);
    // The consumer goes away; more items arrive; the batch's time passes.
    for n in 2..=5 {
        tx.unbounded_send(n).unwrap();
    }
    clock.advance(ms(30));
    // "A batch is emitted [...] when `max_wait` has passed since its *first* item arrived" /
    // "Backpressure: at most one batch (plus one carried-over item) is held; the source is not
    // polled while a finished batch waits for the consumer."
    let first = b.as_mut().poll_next(&mut cx());
    assert_eq!(
        first,
        Poll::Ready(Some(vec![1])),
        "pulled {}",
        pulls.load(SeqCst)
    );
    assert!(
        pulls.load(SeqCst) <= 2,
        "pulled {} into a finished batch",
        pulls.load(SeqCst)
    );
}

/// A reader over `data` returning at most `max_read` bytes a read, failing once at `fail_at`.
struct FailsOnce {
    data: Vec<u8>,
    at: usize,
    max_read: usize,
    fail_at: usize,
    failed: bool,
}

impl AsyncRead for FailsOnce {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if !self.failed && self.at == self.fail_at {
            self.failed = true;
            return Poll::Ready(Err(io::Error::other("once")));
        }
        let limit = if self.failed {
            self.data.len()
        } else {
            self.fail_at
        };
        let n = buf.len().min(self.max_read).min(limit - self.at);
        let at = self.at;
        buf[..n].copy_from_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(n))
    }
}

#[test]
fn line_reader_io_error_inside_an_overlong_line_keeps_its_place_in_both_modes() {
    let data = [
        b"ok1\n".as_slice(),
        &[b'L'; 30],
        b"\nok2\n",
        &[b'M'; 9],
        b"\nlast",
    ]
    .concat();
    let max_line = 8;
    let want_skip = [b"ok1".to_vec(), b"ok2".to_vec(), b"last".to_vec()];
    for fail_at in 0..=data.len() {
        for max_read in [1usize, 3, 64] {
            for buffer in [1usize, 9, 16] {
                for overlong in [Overlong::Skip, Overlong::Error] {
                    let what = format!(
                        "fail_at {fail_at} max_read {max_read} buffer {buffer} {overlong:?}"
                    );
                    let reader = FailsOnce {
                        data: data.clone(),
                        at: 0,
                        max_read,
                        fail_at,
                        failed: false,
                    };
                    let mut r = LineReader::new(reader, buffer, max_line, overlong).unwrap();
                    let mut got = Vec::new();
                    let mut io_errors = 0;
                    let mut too_long = 0;
                    block_on_spinning(async {
                        for _ in 0..1000 {
                            match r.next_batch().await {
                                Ok(Some(b)) => got.extend(b.lines().map(<[u8]>::to_vec)),
                                Ok(None) => return,
                                Err(LinesError::Io(_)) => io_errors += 1,
                                Err(LinesError::TooLong { .. }) => {
                                    too_long += 1;
                                    if too_long == 2 {
                                        return;
                                    }
                                }
                                Err(e) => panic!("{what}: {e:?}"),
                            }
                        }
                        panic!("{what}: no end");
                    });
                    // "LinesError::Io from the reader: the partial line stays buffered, and the
                    // next call reads on from there (a reader that fails once loses nothing)."
                    assert!(io_errors <= 1, "{what}");
                    match overlong {
                        Overlong::Skip => {
                            assert_eq!(got, want_skip, "{what}");
                            // "Skip the line (counted in LineReader::skipped)"
                            assert_eq!(r.skipped(), 2, "{what}");
                        }
                        Overlong::Error => {
                            // "the complete lines before it are delivered first, then this and
                            // every later call fails"
                            assert_eq!(got, [b"ok1".to_vec()], "{what}");
                            assert_eq!(too_long, 2, "{what}");
                        }
                    }
                }
            }
        }
    }
}

async fn write_atomic_odd_paths<R: Runtime>(rt: R) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep"), b"k").unwrap();
    let odd = [
        PathBuf::new(),
        PathBuf::from("/"),
        dir.path().join("."),
        dir.path().join(".."),
        dir.path().join("keep").join("under a file"),
        dir.path().join("slash/"),
    ];
    for path in odd {
        // "Any I/O error from creating, writing, syncing or renaming; an error up to the rename
        // leaves the target untouched and the temporary file removed."
        let r = tidewall::fs::write_atomic(&rt, &path, b"x".to_vec()).await;
        assert!(r.is_err(), "{path:?} was written");
        assert_eq!(
            dir_entries(dir.path()),
            [dir.path().join("keep")],
            "{path:?}: stray files"
        );
        assert_eq!(std::fs::read(dir.path().join("keep")).unwrap(), b"k");
    }
}

#[test]
fn write_atomic_to_paths_without_a_file_name_fails_cleanly_on_every_runtime() {
    on_every_runtime!(write_atomic_odd_paths);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_from_the_end_of_a_1_tib_sparse_file_reads_only_what_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.log");
    let file = std::fs::File::create(&path).unwrap();
    // 1 TiB of zeros, no newline: one endless line. Reading it takes minutes even at memory
    // speed, so the 30 s bounds below, generous for a loaded machine, still tell a read of
    // the end from a read of the whole.
    file.set_len(1 << 40).unwrap();
    drop(file);
    let built = std::time::Instant::now();
    let mut f = follow_on(&Tokio, &path, ms(50), 64, false).unwrap();
    // "building it opens the file on the calling thread (a `stat`, an `open` and, from the
    // end, a read of at most 64 bytes)"
    assert!(
        built.elapsed() < Duration::from_secs(30),
        "building took {:?}",
        built.elapsed()
    );
    append(&path, b"\nafter\n");
    let first = tokio::time::timeout(Duration::from_secs(30), f.next())
        .await
        .expect("no item within 30 s: the file was read from its start?")
        .unwrap();
    // "Started at an end inside a line [...], the rest of that line is skipped: the first line
    // delivered is the first that starts after the follower's start."
    assert_eq!(first.map_err(|e| e.to_string()).unwrap(), b"after");
}
