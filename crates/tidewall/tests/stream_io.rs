//! Line streaming, file reading, following and watching: real bytes, real files.

mod common;
mod support;

use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::io::AsyncRead;
use proptest::prelude::*;
use support::Chunky;
use tidewall::FutureExt as _;
use tidewall::rt::{Runtime, Tokio};
use tidewall::stream::{BlockingReader, LineReader, LinesError, Overlong, follow_on};
use tidewall::testing::Clocked;

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

proptest! {
    /// Lines longer than the maximum, in buffers small or large: `Skip` delivers exactly the
    /// lines that fit and counts the others; `Error` delivers the lines before the first long
    /// one, then fails.
    #[test]
    fn overlong_lines_are_skipped_or_stop_the_reader_exactly(
        lens in proptest::collection::vec(0usize..30, 0..40),
        sizes in proptest::collection::vec(1usize..40, 1..4),
        buffer in 1usize..64,
        max_line in 1usize..20,
    ) {
        let lines: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &n)| vec![b'a' + u8::try_from(i % 26).unwrap(); n]).collect();
        let mut data = lines.join(&b'\n');
        if !lines.is_empty() {
            data.push(b'\n');
        }
        let chunky = || Chunky { data: data.clone(), pos: 0, sizes: sizes.clone(), turn: 0 };
        let fitting: Vec<Vec<u8>> = lines.iter().filter(|l| l.len() <= max_line).cloned().collect();
        let (got, skipped) = read_all(chunky(), buffer, max_line, Overlong::Skip).unwrap();
        prop_assert_eq!(got, fitting);
        prop_assert_eq!(skipped, (lines.len() - lines.iter().filter(|l| l.len() <= max_line).count()) as u64);

        let before: Vec<Vec<u8>> = lines.iter().take_while(|l| l.len() <= max_line).cloned().collect();
        let mut delivered = Vec::new();
        // (failed, and failed again when called once more)
        let (failed, sticky) = futures_util::FutureExt::now_or_never(async {
            let mut reader = LineReader::new(chunky(), buffer, max_line, Overlong::Error).unwrap();
            loop {
                match reader.next_batch().await {
                    Ok(Some(batch)) => delivered.extend(batch.lines().map(<[u8]>::to_vec)),
                    Ok(None) => return (false, false),
                    Err(_) => return (true, reader.next_batch().await.is_err()),
                }
            }
        })
        .unwrap();
        prop_assert_eq!(&delivered, &before);
        prop_assert_eq!(failed, before.len() < lines.len());
        prop_assert_eq!(sticky, failed, "the reader stops at the overlong line");
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
    // Complete lines buffered right after a skipped line are delivered, not lost.
    let mut tricky = vec![b'X'; 11];
    tricky.extend_from_slice(b"\nb\nccccccccc\n");
    let (lines, skipped) = read_all(
        Chunky {
            data: tricky,
            pos: 0,
            sizes: vec![100],
            turn: 0,
        },
        11,
        10,
        Overlong::Skip,
    )
    .unwrap();
    assert_eq!(
        (lines, skipped),
        (vec![b"b".to_vec(), b"ccccccccc".to_vec()], 1)
    );
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
    let mut lines = follow_on(&rt, &path, Duration::from_millis(100), 1024, false).unwrap();
    let append = |text: &str| {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    };
    // Appended at once: the follower starts where the file ended when it was built.
    append("one\ntw");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"one");
    append("o\n");
    assert_eq!(
        lines.next().await.unwrap().unwrap(),
        b"two",
        "a partial line waits for its newline"
    );
    // Rotation: a last line lands in the old file just before it is moved away and a new
    // one takes its place; the old file is read to its end first.
    append("last words\n");
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    std::fs::write(&path, b"fresh\n").unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"last words");
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

async fn a_file_that_appears_later_is_read_from_its_start<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.log");
    let mut lines = follow_on(&rt, &path, Duration::from_millis(100), 1024, false).unwrap();
    assert!(
        lines
            .next()
            .timeout_on(&rt, Duration::from_millis(250))
            .await
            .is_err(),
        "no file yet"
    );
    std::fs::write(&path, b"first\nsecond\n").unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"first");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"second");
}

#[test]
fn follow_reads_a_late_file_from_its_start_on_every_runtime() {
    on_every_runtime!(a_file_that_appears_later_is_read_from_its_start);
}

/// A reader that fails once, then goes on; or panics.
struct Flaky {
    data: std::io::Cursor<Vec<u8>>,
    calls: u32,
    panic: bool,
}

impl std::io::Read for Flaky {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        if self.calls == 2 {
            assert!(!self.panic, "the disk caught fire");
            return Err(std::io::Error::other("transient"));
        }
        let n = buf.len().min(8);
        std::io::Read::read(&mut self.data, &mut buf[..n])
    }
}

#[test]
fn blocking_reader_errors_are_retryable_and_panics_are_final() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let data = b"aaaa\nbbbb\ncccc\n".to_vec();
        let reader = BlockingReader::new(
            Tokio,
            Flaky {
                data: std::io::Cursor::new(data.clone()),
                calls: 0,
                panic: false,
            },
            64,
        )
        .unwrap();
        let mut lines = LineReader::new(reader, 64, 64, Overlong::Error).unwrap();
        let mut got = Vec::new();
        let mut errors = 0;
        loop {
            match lines.next_batch().await {
                Ok(Some(batch)) => got.extend(batch.lines().map(<[u8]>::to_vec)),
                Ok(None) => break,
                Err(_) => errors += 1,
            }
        }
        assert_eq!(errors, 1);
        assert_eq!(
            got,
            [b"aaaa".to_vec(), b"bbbb".to_vec(), b"cccc".to_vec()],
            "nothing lost to the retry"
        );

        let reader = BlockingReader::new(
            Tokio,
            Flaky {
                data: std::io::Cursor::new(data),
                calls: 0,
                panic: true,
            },
            64,
        )
        .unwrap();
        let mut lines = LineReader::new(reader, 64, 64, Overlong::Error).unwrap();
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            outcomes.push(
                lines
                    .next_batch()
                    .await
                    .map(|b| b.is_some())
                    .map_err(|e| e.to_string()),
            );
        }
        assert!(
            outcomes[1..].iter().all(Result::is_err),
            "a panicked read is final, never EOF: {outcomes:?}"
        );
    });
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
            tidewall::stream::watch_dir_on(&Tokio, dir.path(), Duration::from_millis(50)).unwrap();
        for name in ["a", "b", "c"] {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        // The OS delivers events from its own thread: they may straddle a debounce window,
        // so gather batches until all three files were reported.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10 {
            let batch = changes.next().await.unwrap().unwrap();
            assert!(!batch.overflowed);
            assert!(!batch.paths.is_empty(), "a batch is never empty");
            seen.extend(
                batch
                    .paths
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
            );
            if ["a", "b", "c"].iter().all(|n| seen.contains(*n)) {
                return;
            }
        }
        panic!("not every change was reported: {seen:?}");
    });
}

/// Reading a file is not a change: a consumer that reads the files it is told about (a
/// configuration reload) must not wake itself.
#[cfg(feature = "watch")]
#[test]
fn watch_dir_does_not_report_reads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("read"), "unchanged").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut changes =
            tidewall::stream::watch_dir_on(&Tokio, dir.path(), Duration::from_millis(50)).unwrap();
        for _ in 0..3 {
            assert_eq!(
                std::fs::read_to_string(dir.path().join("read")).unwrap(),
                "unchanged"
            );
        }
        // Written after the reads: every batch up to the one naming it holds whatever the
        // reads produced.
        std::fs::write(dir.path().join("written"), "new").unwrap();
        for _ in 0..10 {
            let batch = changes.next().await.unwrap().unwrap();
            let names: Vec<_> = batch
                .paths
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            assert!(
                !names.iter().any(|n| n == "read"),
                "a read was reported: {names:?}"
            );
            if names.iter().any(|n| n == "written") {
                return;
            }
        }
        panic!("the write was never reported");
    });
}
