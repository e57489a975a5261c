//! Constant memory, counted: aggregating a log of any size holds the same peak heap, and
//! line streaming allocates nothing per line.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};

use futures_util::io::AsyncRead;
use tidewall::rt::Tokio;
use tidewall::stream::{BlockingReader, LineReader, Overlong};

struct Tracking;

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
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
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
struct GeneratedLog {
    left: usize,
    line: u64,
    pending: Vec<u8>,
    at: usize,
}

impl GeneratedLog {
    fn new(len: usize) -> Self {
        Self {
            left: len,
            line: 0,
            pending: Vec::with_capacity(128),
            at: 0,
        }
    }
}

const STATUSES: [&str; 4] = ["200", "404", "500", "201"];

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
async fn aggregate(reader: impl AsyncRead + Unpin) -> [u64; 4] {
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

#[test]
fn peak_heap_does_not_grow_with_the_input_and_no_line_allocates() {
    let run =
        |len| futures_util::FutureExt::now_or_never(aggregate(GeneratedLog::new(len))).unwrap();
    let (small, small_peak, small_allocs) = measure(|| run(16 << 20));
    let (large, large_peak, large_allocs) = measure(|| run(128 << 20));
    assert!(
        large.iter().sum::<u64>() > 7 * small.iter().sum::<u64>(),
        "{small:?} {large:?}"
    );
    // One 1 MiB buffer plus the generator's line buffer, whatever the size.
    assert!(large_peak <= (1 << 20) + 4096, "{large_peak}");
    assert_eq!(
        small_peak, large_peak,
        "peak heap is independent of the input size"
    );
    assert_eq!(
        small_allocs, large_allocs,
        "a constant number of allocations, none per line"
    );
}

#[test]
fn a_file_read_through_the_runtime_holds_constant_memory() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let write = |name: &str, len: usize| {
        let path = dir.path().join(name);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut log = GeneratedLog::new(len);
        let mut buf = vec![0; 1 << 16];
        loop {
            let n = futures_util::FutureExt::now_or_never(futures_util::io::AsyncReadExt::read(
                &mut log, &mut buf,
            ))
            .unwrap()
            .unwrap();
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).unwrap();
        }
        path
    };
    let (small, large) = (write("small.log", 8 << 20), write("large.log", 32 << 20));
    let run = |path: &std::path::Path| {
        runtime.block_on(async {
            aggregate(
                BlockingReader::new(Tokio, std::fs::File::open(path).unwrap(), 1 << 20).unwrap(),
            )
            .await
        })
    };
    // Warm up: the first run starts the blocking thread pool.
    run(&small);
    let (_, small_peak, _) = measure(|| run(&small));
    let (counts, large_peak, _) = measure(|| run(&large));
    assert!(counts.iter().sum::<u64>() > 0);
    // Two chunks in flight plus the line buffer: ~3 MiB, whatever the file size.
    assert!(large_peak <= 4 << 20, "{large_peak}");
    assert!(
        large_peak.abs_diff(small_peak) <= 64 * 1024,
        "{small_peak} vs {large_peak}"
    );
}
