//! Constant memory, counted: a file read through the runtime's blocking pool holds the same
//! peak heap whatever its size. The only test in this binary: its allocator counts the whole
//! process, blocking threads included (see common/stream_memory.rs).

#[path = "common/stream_memory.rs"]
mod stream_memory;

use std::io::Write;

use stream_memory::{GeneratedLog, aggregate, measure};
use tidewall::rt::Tokio;
use tidewall::stream::BlockingReader;

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
