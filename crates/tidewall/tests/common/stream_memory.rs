//! What the constant-memory tests share: a global allocator that counts the whole process's
//! heap, a log generated on the fly, and the aggregation the tour runs. The counters see every
//! thread, so each test using them has a test binary to itself (a test running beside it on
//! another thread would be counted too).
#![allow(dead_code, unreachable_pub)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};

use futures_util::io::AsyncRead;
use tidewall::stream::{LineReader, Overlong};

/// Counts the process's live heap, its peak and its allocations, on every thread.
pub struct Tracking;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only keeps counters.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), SeqCst) + layout.size();
        PEAK.fetch_max(now, SeqCst);
        ALLOCATIONS.fetch_add(1, SeqCst);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), SeqCst);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Peak heap growth and allocation count while `f` runs.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let base = CURRENT.load(SeqCst);
    PEAK.store(base, SeqCst);
    let allocations = ALLOCATIONS.load(SeqCst);
    let out = f();
    (
        out,
        PEAK.load(SeqCst) - base,
        ALLOCATIONS.load(SeqCst) - allocations,
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
