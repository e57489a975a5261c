//! `follow_on` through its public surface: rotation, copy-truncate and lines written just
//! before a rename, each while the follower is not polled, on every runtime in virtual time.

mod common;
#[path = "common/spawn_adapters.rs"]
mod spawn_adapters;

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt as _;
use tidewall::FutureExt as _;
use tidewall::rt::{Clock, Runtime};
use tidewall::stream::{Follow, follow_on};
use tidewall::testing::Clocked;

const PERIOD: Duration = Duration::from_millis(100);
/// Long enough for many periods: the follower is not polled meanwhile.
const AWHILE: Duration = Duration::from_secs(5);

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

fn copy_truncate(path: &Path, copy: &Path) {
    std::fs::copy(path, copy).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(0)
        .unwrap();
}

/// The next lines, as text.
async fn next<R: Runtime>(lines: &mut Follow<Clocked<R>>, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let line = lines.next().await.unwrap().unwrap();
        out.push(String::from_utf8(line).unwrap());
    }
    out
}

/// Nothing more comes for a while (nothing repeated, nothing left over).
async fn quiet<R: Runtime>(rt: &Clocked<R>, lines: &mut Follow<Clocked<R>>) {
    let more = lines.next().timeout_on(rt, AWHILE).await;
    assert!(more.is_err(), "unexpected: {more:?}");
}

/// A follower on `path`, past its first check.
async fn follower<R: Runtime>(rt: &Clocked<R>, path: &Path) -> Follow<Clocked<R>> {
    let lines = follow_on(rt, path, PERIOD, 1024, true).unwrap();
    rt.sleep(PERIOD / 2).await;
    lines
}

async fn rotation_while_not_polled_loses_nothing<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(&path, "one\n").unwrap();
    let mut lines = follower(&rt, &path).await;
    assert_eq!(next(&mut lines, 1).await, ["one"]);
    rt.sleep(AWHILE).await;
    // The last lines of the old file land right before its rename; the new file fills
    // while the follower is still not polled.
    append(&path, "last words\nreally last\n");
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    std::fs::write(&path, "fresh\n").unwrap();
    rt.sleep(AWHILE).await;
    append(&path, "more\n");
    assert_eq!(
        next(&mut lines, 4).await,
        ["last words", "really last", "fresh", "more"]
    );
    quiet(&rt, &mut lines).await;
}

#[test]
fn rotation_while_not_polled_loses_nothing_on_every_runtime() {
    on_every_runtime!(rotation_while_not_polled_loses_nothing);
}

async fn a_writer_still_on_the_old_file_is_read_up_to_the_next_check<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(&path, "one\n").unwrap();
    let mut lines = follower(&rt, &path).await;
    assert_eq!(next(&mut lines, 1).await, ["one"]);
    let mut writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    writer.write_all(b"late, to the renamed file\n").unwrap();
    std::fs::write(&path, "fresh\n").unwrap();
    rt.sleep(AWHILE).await;
    assert_eq!(
        next(&mut lines, 2).await,
        ["late, to the renamed file", "fresh"]
    );
    // Once the follower has moved on, the old file is no longer read.
    writer.write_all(b"too late\n").unwrap();
    quiet(&rt, &mut lines).await;
}

#[test]
fn a_writer_still_on_the_renamed_file_is_read_up_to_the_next_check_on_every_runtime() {
    on_every_runtime!(a_writer_still_on_the_old_file_is_read_up_to_the_next_check);
}

async fn copy_truncate_while_not_polled_is_read_from_the_start<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let (path, copy) = (dir.path().join("app.log"), dir.path().join("app.log.1"));
    std::fs::write(&path, "a\nb\n").unwrap();
    let mut lines = follower(&rt, &path).await;
    assert_eq!(next(&mut lines, 2).await, ["a", "b"]);
    // Truncated, then written less than was read before.
    rt.sleep(AWHILE).await;
    copy_truncate(&path, &copy);
    append(&path, "c\n");
    rt.sleep(AWHILE).await;
    assert_eq!(next(&mut lines, 1).await, ["c"]);
    // Truncated, then written past what was read before: still read whole, from the start.
    copy_truncate(&path, &copy);
    append(&path, "after the truncation, a longer line\n");
    rt.sleep(AWHILE).await;
    append(&path, "and another\n");
    assert_eq!(
        next(&mut lines, 2).await,
        ["after the truncation, a longer line", "and another"]
    );
    quiet(&rt, &mut lines).await;
}

#[test]
fn copy_truncate_while_not_polled_is_read_from_the_start_on_every_runtime() {
    on_every_runtime!(copy_truncate_while_not_polled_is_read_from_the_start);
}

/// The documented limits of looking only at each check: a file that came and went between
/// two checks is never read, and a truncated file rewritten with the very bytes that were
/// there is taken as unchanged.
async fn what_a_check_cannot_see<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(&path, "a\n").unwrap();
    let mut lines = follower(&rt, &path).await;
    assert_eq!(next(&mut lines, 1).await, ["a"]);
    append(&path, "a-last\n");
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    std::fs::write(&path, "unseen\n").unwrap();
    std::fs::rename(&path, dir.path().join("app.log.2")).unwrap();
    std::fs::write(&path, "tick\n").unwrap();
    rt.sleep(AWHILE).await;
    assert_eq!(next(&mut lines, 2).await, ["a-last", "tick"]);
    std::fs::write(&path, "tick\nnew\n").unwrap();
    rt.sleep(AWHILE).await;
    assert_eq!(next(&mut lines, 1).await, ["new"]);
    quiet(&rt, &mut lines).await;
}

#[test]
fn what_a_check_cannot_see_on_every_runtime() {
    on_every_runtime!(what_a_check_cannot_see);
}

/// A `max_line` past `stream::MAX_BUFFER` is refused, as every reader refuses one: the
/// partial line it would let grow is unbounded otherwise.
#[tokio::test]
async fn a_max_line_past_the_largest_buffer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let huge = follow_on(
        &tidewall::rt::Tokio,
        &path,
        Duration::from_millis(10),
        tidewall::stream::MAX_BUFFER + 1,
        false,
    );
    assert!(matches!(
        huge.map(drop),
        Err(tidewall::ConfigError::OutOfRange {
            field: "max_line",
            ..
        })
    ));
}

/// `rt`, losing the follower's second check (its blocking job 1) as a runtime shutting down
/// loses a job it has not started.
fn losing_the_second_check<R: Runtime>(
    rt: &Clocked<R>,
) -> spawn_adapters::LosesBlocking<Clocked<R>> {
    spawn_adapters::LosesBlocking {
        inner: rt.clone(),
        jobs: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        lose: |job| job == 1,
    }
}

/// "So is a check lost to a panic or to its runtime: the next check goes on from where the
/// lost one began, in the same file if the path still names it." The follower's second check
/// is lost: its lines come with the next check, once each, and nothing before them again.
async fn a_lost_check_goes_on_where_it_began<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(&path, "old 1\nold 2\nold 3\n").unwrap();
    let losing = losing_the_second_check(&rt);
    let mut lines = follow_on(&losing, &path, PERIOD, 1024, false).unwrap();
    append(&path, "new 1\n");
    let first = lines.next().await.unwrap().unwrap();
    assert_eq!(first, b"new 1");
    append(&path, "new 2\npartial");
    let lost = lines.next().await.unwrap().unwrap_err();
    assert!(lost.to_string().contains("cancelled"), "{lost}");
    append(&path, " line\n");
    assert_eq!(
        String::from_utf8(lines.next().await.unwrap().unwrap()).unwrap(),
        "new 2"
    );
    assert_eq!(
        String::from_utf8(lines.next().await.unwrap().unwrap()).unwrap(),
        "partial line"
    );
    let more = lines.next().timeout_on(&rt, AWHILE).await;
    assert!(more.is_err(), "nothing read twice: {more:?}");
}

/// "... (a file rotated away meanwhile is let go, and the one now at the path read from its
/// start)."
async fn a_lost_check_then_a_rotation_reads_the_new_file<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(&path, "old\n").unwrap();
    let losing = losing_the_second_check(&rt);
    let mut lines = follow_on(&losing, &path, PERIOD, 1024, false).unwrap();
    append(&path, "seen\n");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"seen");
    append(&path, "gone with the rotation\n");
    assert!(lines.next().await.unwrap().is_err(), "the lost check");
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    std::fs::write(&path, "fresh\n").unwrap();
    assert_eq!(lines.next().await.unwrap().unwrap(), b"fresh");
    let more = lines.next().timeout_on(&rt, AWHILE).await;
    assert!(more.is_err(), "nothing more: {more:?}");
}

/// After a lost check, a check that cannot even open the path (here: a symbolic link loop put
/// in its place) keeps the place to resume from: once the file is back, the lines come from
/// where the lost check began, once each (review r21: the failed open dropped it, and the
/// file was read again from its start).
#[cfg(unix)]
async fn a_failed_open_after_a_lost_check_keeps_the_resume_point<R: Runtime>(rt: Clocked<R>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let aside = dir.path().join("app.log.aside");
    std::fs::write(&path, "old 1\nold 2\n").unwrap();
    let losing = losing_the_second_check(&rt);
    let mut lines = follow_on(&losing, &path, PERIOD, 1024, false).unwrap();
    append(&path, "new 1\n");
    assert_eq!(lines.next().await.unwrap().unwrap(), b"new 1");
    append(&path, "new 2\n");
    assert!(lines.next().await.unwrap().is_err(), "the lost check");
    std::fs::rename(&path, &aside).unwrap();
    std::os::unix::fs::symlink(&path, &path).unwrap();
    assert!(
        lines.next().await.unwrap().is_err(),
        "the path cannot be opened"
    );
    std::fs::remove_file(&path).unwrap();
    std::fs::rename(&aside, &path).unwrap();
    append(&path, "new 3\n");
    for want in ["new 2", "new 3"] {
        assert_eq!(lines.next().await.unwrap().unwrap(), want.as_bytes());
    }
    let more = lines.next().timeout_on(&rt, AWHILE).await;
    assert!(more.is_err(), "nothing read twice: {more:?}");
}

#[test]
fn a_lost_check_on_every_runtime() {
    on_every_runtime!(a_lost_check_goes_on_where_it_began);
    on_every_runtime!(a_lost_check_then_a_rotation_reads_the_new_file);
    #[cfg(unix)]
    on_every_runtime!(a_failed_open_after_a_lost_check_keeps_the_resume_point);
}
