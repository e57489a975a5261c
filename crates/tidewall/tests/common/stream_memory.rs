//! What the constant-memory tests share: a global allocator that counts the heap while a
//! measurement runs, a log generated on the fly, and the aggregation the tour runs. Work that
//! stays on one thread is measured on that thread alone ([`measure_this_thread`]): under plain
//! `cargo test` the harness's own threads allocate too. Work spread over threads (a blocking
//! pool) is measured process-wide ([`measure`]), so each test has a test binary to itself.
#![allow(dead_code, unreachable_pub)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};

use futures_util::io::AsyncRead;
use tidewall::stream::{LineReader, Overlong};

/// Counts the live heap, its peak and the allocations of the thread inside [`measure`].
pub struct Tracking;

static CURRENT: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// Whether every thread is counted (otherwise only a thread whose `MEASURING` is set).
static EVERY_THREAD: AtomicBool = AtomicBool::new(false);

thread_local! {
    // A const-initialized `Cell` with no destructor: reading it never allocates.
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

fn measuring() -> bool {
    EVERY_THREAD.load(SeqCst) || MEASURING.try_with(Cell::get).unwrap_or(false)
}

fn size_of(layout: Layout) -> isize {
    isize::try_from(layout.size()).unwrap_or(isize::MAX)
}

// SAFETY: forwards to the system allocator unchanged; only keeps counters.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if measuring() {
            let now = CURRENT.fetch_add(size_of(layout), SeqCst) + size_of(layout);
            PEAK.fetch_max(now, SeqCst);
            ALLOCATIONS.fetch_add(1, SeqCst);
        }
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if measuring() {
            CURRENT.fetch_sub(size_of(layout), SeqCst);
        }
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Peak heap growth and allocation count of the whole process while `f` runs.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    EVERY_THREAD.store(true, SeqCst);
    let measured = measure_this_thread(f);
    EVERY_THREAD.store(false, SeqCst);
    measured
}

/// Peak heap growth and allocation count of this thread while `f` runs.
pub fn measure_this_thread<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    CURRENT.store(0, SeqCst);
    PEAK.store(0, SeqCst);
    ALLOCATIONS.store(0, SeqCst);
    MEASURING.with(|m| m.set(true));
    let out = f();
    MEASURING.with(|m| m.set(false));
    (
        out,
        usize::try_from(PEAK.load(SeqCst)).unwrap_or(0),
        ALLOCATIONS.load(SeqCst),
    )
}

/// A log of `len` bytes generated on the fly: nothing of it is ever stored.
pub struct GeneratedLog {
    left: usize,
    line: u64,
    pending: Vec<u8>,
    at: usize,
}

impl GeneratedLog {
    pub fn new(len: usize) -> Self {
        Self {
            left: len,
            line: 0,
            pending: Vec::with_capacity(128),
            at: 0,
        }
    }
}

pub const STATUSES: [&str; 4] = ["200", "404", "500", "201"];

impl AsyncRead for GeneratedLog {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut written = 0;
        while written < buf.len() && self.left > 0 {
            if self.at == self.pending.len() {
                let n = self.line;
                self.line += 1;
                self.pending.clear();
                let minute = (n / 1000) % 60;
                let status = STATUSES[usize::try_from(n % 4).unwrap()];
                writeln!(
                    self.pending,
                    "2026-11-25T10:{minute:02}:00Z GET /api/items/{n} {status} 512"
                )
                .unwrap();
                self.at = 0;
            }
            let n = (self.pending.len() - self.at)
                .min(buf.len() - written)
                .min(self.left);
            let at = self.at;
            buf[written..written + n].copy_from_slice(&self.pending[at..at + n]);
            self.at += n;
            self.left -= n;
            written += n;
        }
        Poll::Ready(Ok(written))
    }
}

/// Counts lines per status code, the aggregation the tour runs.
pub async fn aggregate(reader: impl AsyncRead + Unpin) -> [u64; 4] {
    let mut lines = LineReader::new(reader, 1 << 20, 64 * 1024, Overlong::Error).unwrap();
    let mut counts = [0u64; 4];
    while let Some(batch) = lines.next_batch().await.unwrap() {
        for line in batch.lines() {
            // "...Z GET /api/items/N SSS 512": the status is the 3 bytes before " 512".
            let status = &line[line.len() - 7..line.len() - 4];
            if let Some(i) = STATUSES.iter().position(|s| s.as_bytes() == status) {
                counts[i] += 1;
            }
        }
    }
    counts
}
