//! Line streaming, file reading, following and watching: real bytes, real files.

mod common;

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::io::AsyncRead;
use proptest::prelude::*;
use tidewall::FutureExt as _;
use tidewall::rt::{Runtime, Tokio};
use tidewall::stream::{BlockingReader, LineReader, LinesError, Overlong, follow_on};
use tidewall::testing::Clocked;

/// Hands out its input in reads of the given sizes (cycling), to exercise every split.
struct Chunky {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    turn: usize,
}

impl AsyncRead for Chunky {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let size = self.sizes[self.turn % self.sizes.len()].max(1);
        self.turn += 1;
        let n = size.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}

fn read_all(
    reader: impl AsyncRead + Unpin,
    buffer: usize,
    max_line: usize,
    overlong: Overlong,
) -> Result<(Vec<Vec<u8>>, u64), LinesError> {
    futures_util::FutureExt::now_or_never(async {
        let mut lines = LineReader::new(reader, buffer, max_line, overlong).unwrap();
        let mut out = Vec::new();
        while let Some(batch) = lines.next_batch().await? {
            out.extend(batch.lines().map(<[u8]>::to_vec));
        }
        Ok((out, lines.skipped()))
    })
    .unwrap()
}

proptest! {
    /// Whatever the read sizes and buffer size, the lines are exactly the input's lines.
    #[test]
    fn lines_match_the_input_for_any_split(
        lines in proptest::collection::vec(proptest::collection::vec(any::<u8>().prop_filter("no newline", |b| *b != b'\n'), 0..40), 0..60),
        trailing_newline in any::<bool>(),
        sizes in proptest::collection::vec(1usize..50, 1..5),
        buffer in 1usize..128,
    ) {
        let mut data = lines.join(&b'\n');
        if trailing_newline && !lines.is_empty() {
            data.push(b'\n');
        }
        let expected: Vec<Vec<u8>> = if data.is_empty() { Vec::new() } else {
            let body = data.strip_suffix(b"\n").unwrap_or(&data);
            body.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
        };
        let reader = Chunky { data: data.clone(), pos: 0, sizes, turn: 0 };
        let (got, skipped) = read_all(reader, buffer, 64, Overlong::Error).unwrap();
        prop_assert_eq!(got, expected);
        prop_assert_eq!(skipped, 0);
    }
}

#[test]
fn overlong_lines_fail_or_are_skipped_by_choice() {
    let data = b"short\nthis line is far too long\nok\n".to_vec();
    let chunky = |d: &[u8]| Chunky {
        data: d.to_vec(),
        pos: 0,
        sizes: vec![7],
        turn: 0,
    };
    assert!(matches!(
        read_all(chunky(&data), 8, 10, Overlong::Error),
        Err(LinesError::TooLong { max: 10 })
    ));
    let (lines, skipped) = read_all(chunky(&data), 8, 10, Overlong::Skip).unwrap();
    assert_eq!(lines, [b"short".to_vec(), b"ok".to_vec()]);
    assert_eq!(skipped, 1);
    // An overlong line inside one large buffer is caught too.
    let (lines, skipped) = read_all(chunky(&data), 1 << 16, 10, Overlong::Skip).unwrap();
    assert_eq!((lines.len(), skipped), (2, 1));
}

#[test]
fn invalid_utf8_is_delivered_as_bytes() {
    let data = b"caf\xe9\n\xff\xfe\n".to_vec();
    let (lines, _) = read_all(
        Chunky {
            data,
            pos: 0,
            sizes: vec![100],
            turn: 0,
        },
        64,
        64,
        Overlong::Error,
    )
    .unwrap();
    assert_eq!(lines, [b"caf\xe9".to_vec(), b"\xff\xfe".to_vec()]);
    assert!(
        std::str::from_utf8(&lines[0]).is_err(),
        "a UTF-8 view is an explicit, fallible step"
    );
}

#[test]
fn blocking_reader_reads_a_file_through_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.log");
    let mut file = std::fs::File::create(&path).unwrap();
    for i in 0..200_000u32 {
        writeln!(file, "line {i}").unwrap();
    }
    drop(file);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let count = runtime.block_on(async {
        let reader =
            BlockingReader::new(Tokio, std::fs::File::open(&path).unwrap(), 64 * 1024).unwrap();
        let mut lines = LineReader::new(reader, 64 * 1024, 256, Overlong::Error).unwrap();
        let (mut count, mut last) = (0u32, Vec::new());
        while let Some(batch) = lines.next_batch().await.unwrap() {
            for line in batch.lines() {
                assert_eq!(line, format!("line {count}").as_bytes());
                count += 1;
                last = line.to_vec();
            }
        }
        assert_eq!(last, b"line 199999");
        count
    });
    assert_eq!(count, 200_000);
}

async fn follows_appends_rotation_and_truncation<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(&path, b"old line, before following\n").unwrap();
    let mut lines = follow_on(rt.clone(), &path, Duration::from_millis(100), 1024, false).unwrap();
    let append = |text: &str| {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    };
    // Let the first check record the end of the file before appending.
    rt.sleep(Duration::from_millis(150)).await;
    append("one\ntw");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"one");
    append("o\n");
    assert_eq!(
        lines.next().await.unwrap().unwrap(),
        b"two",
        "a partial line waits for its newline"
    );
    // Rotation: the file is moved away and a new one takes its place.
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    std::fs::write(&path, b"fresh\n").unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"fresh");
    // Truncation in place: read again from the start. (Like `tail -F`, truncation is seen
    // when a check finds the file shorter than the offset, so keep the follower polling.)
    std::fs::write(&path, b"").unwrap();
    assert!(
        lines
            .next()
            .timeout_on(&rt, Duration::from_millis(150))
            .await
            .is_err(),
        "nothing new"
    );
    append("after truncate\n");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"after truncate");
}

#[test]
fn follow_survives_rotation_and_truncation_on_every_runtime() {
    on_every_runtime!(follows_appends_rotation_and_truncation);
}

#[cfg(feature = "watch")]
#[test]
fn watch_dir_debounces_changes() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut changes =
            tidewall::stream::watch_dir_on(Tokio, dir.path(), Duration::from_millis(50)).unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        let batch = changes.next().await.unwrap().unwrap();
        for name in ["a", "b", "c"] {
            assert!(batch.paths.iter().any(|p| p.ends_with(name)), "{batch:?}");
        }
        assert!(!batch.overflowed);
    });
}
