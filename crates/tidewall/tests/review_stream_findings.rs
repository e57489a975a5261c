//! Regression tests for a docs-against-code review of `stream` (follow, interval, watch) and
//! `fs::write_atomic`: one test per finding, each asserting what the public docs promise.
//! Virtual time wherever time matters; real files in temporary directories.
#![cfg(all(
    feature = "tokio",
    feature = "smol",
    feature = "async-std",
    feature = "test-util"
))]

mod common;

use std::future::Future;
use std::io::Write as _;
use std::path::Path;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Instant;

use common::ms;
use futures_util::task::noop_waker_ref;
use futures_util::{Stream, StreamExt as _, stream};
use tidewall::FutureExt as _;
use tidewall::fs::write_atomic;
use tidewall::rt::{Clock, JoinError, Runtime, Spawn, TaskHandle, Tokio};
use tidewall::stream::{Follow, MissedTicks, follow_on, interval_on};
use tidewall::testing::FakeClock;

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// The next line, or a failure naming `what` if none comes within a second of virtual time.
async fn next_line<R: Runtime>(rt: &R, lines: &mut Follow<R>, what: &str) -> String {
    let line = lines.next().timeout_on(rt, ms(1_000)).await;
    let line = line.unwrap_or_else(|_| panic!("{what}: no line came"));
    String::from_utf8(line.unwrap().unwrap()).unwrap()
}

fn poll_next<S: Stream>(stream: Pin<&mut S>) -> Poll<Option<S::Item>> {
    stream.poll_next(&mut Context::from_waker(noop_waker_ref()))
}

// ---------------------------------------------------------------------------------------------
// follow_on
// ---------------------------------------------------------------------------------------------

/// Tokio with a busy blocking pool: blocking work starts only when its handle is first
/// polled, the latest a runtime may start it.
#[derive(Clone)]
struct BusyPool;

impl Clock for BusyPool {
    type Sleep = <Tokio as Clock>::Sleep;

    fn now(&self) -> Instant {
        Tokio.now()
    }

    fn sleep_until(&self, deadline: Instant) -> Self::Sleep {
        Tokio.sleep_until(deadline)
    }
}

type Work<T> = Box<dyn FnOnce() -> T + Send>;

enum Later<T: Send + 'static> {
    Queued(Option<Work<T>>),
    Started(<Tokio as Spawn>::JoinHandle<T>),
}

impl<T: Send + 'static> Future for Later<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Self::Queued(work) = &mut *self {
            let work = work.take().expect("started once");
            *self = Self::Started(Tokio.spawn_blocking(work));
        }
        match &mut *self {
            Self::Started(handle) => Pin::new(handle).poll(cx),
            Self::Queued(_) => unreachable!("started above"),
        }
    }
}

impl<T: Send + 'static> TaskHandle<T> for Later<T> {
    fn abort(&self) {
        if let Self::Started(handle) = self {
            handle.abort();
        }
    }
}

impl Spawn for BusyPool {
    type JoinHandle<T: Send + 'static> = Later<T>;

    fn spawn<F>(&self, future: F) -> Later<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Later::Started(Tokio.spawn(future))
    }

    fn spawn_blocking<W, T>(&self, work: W) -> Later<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        Later::Queued(Some(Box::new(work)))
    }
}

/// Finding 1. `Follow`: "It starts where the file is when the follower is built ... So lines
/// appended as soon as `follow_on` returns are delivered"; "A file that does not exist yet
/// ... is read from its start".
async fn appends_right_after_the_build_are_delivered<R: Runtime>(rt: R) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(&path, "old\n").unwrap();
    let mut lines = follow_on(&rt, &path, ms(50), 1024, false).unwrap();
    append(&path, "new\n");
    assert_eq!(next_line(&rt, &mut lines, "appended").await, "new");

    let missing = dir.path().join("later.log");
    let mut lines = follow_on(&rt, &missing, ms(50), 1024, false).unwrap();
    std::fs::write(&missing, "first\n").unwrap();
    assert_eq!(next_line(&rt, &mut lines, "created").await, "first");
}

#[test]
fn follow_delivers_appends_made_right_after_it_is_built_on_every_runtime() {
    on_every_runtime!(appends_right_after_the_build_are_delivered);
}

#[tokio::test(start_paused = true)]
async fn follow_delivers_appends_made_before_its_first_check_runs() {
    appends_right_after_the_build_are_delivered(BusyPool).await;
}

/// Finding 4. "Building it needs no runtime (it spawns nothing): it may be built outside one
/// and polled inside one."
#[test]
fn follow_is_built_outside_a_runtime_and_polled_inside_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(&path, "old\n").unwrap();
    let mut lines = follow_on(&Tokio, &path, ms(50), 1024, false).unwrap();
    append(&path, "new\n");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let line = runtime.block_on(next_line(&Tokio, &mut lines, "built outside"));
    assert_eq!(line, "new");
}

/// Finding 6. "Started at an end inside a line ..., the rest of that line is skipped: the
/// first line delivered is the first that starts after the follower's start."
#[tokio::test(start_paused = true)]
async fn follow_from_the_end_skips_the_rest_of_the_line_it_starts_in() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    std::fs::write(&path, "old\npart").unwrap();
    let mut lines = follow_on(&Tokio, &path, ms(50), 1024, false).unwrap();
    let early = lines.next().timeout_on(&Tokio, ms(200)).await;
    assert!(early.is_err(), "nothing was appended yet: {early:?}");
    append(&path, "ial\nnext\n");
    assert_eq!(
        next_line(&Tokio, &mut lines, "after the partial line").await,
        "next"
    );
}

// ---------------------------------------------------------------------------------------------
// interval_on
// ---------------------------------------------------------------------------------------------

/// Finding 2. `MissedTicks::Delay`: "Any lateness of the consumer restarts it ...; a wake-up
/// the consumer was already waiting for, made late by less than a period ..., does not".
#[test]
fn delay_keeps_the_schedule_for_a_wake_up_half_a_period_late() {
    let clock = FakeClock::new();
    let start = clock.now();
    let mut ticks = pin!(interval_on(&clock, ms(100), MissedTicks::Delay).unwrap());
    assert!(poll_next(ticks.as_mut()).is_pending());
    clock.advance(ms(100));
    assert_eq!(
        poll_next(ticks.as_mut()),
        Poll::Ready(Some(start + ms(100)))
    );
    // Asked for in time; the wake-up comes half a period late (a stalled executor).
    assert!(poll_next(ticks.as_mut()).is_pending());
    clock.advance(ms(150));
    assert_eq!(
        poll_next(ticks.as_mut()),
        Poll::Ready(Some(start + ms(200)))
    );
    assert!(poll_next(ticks.as_mut()).is_pending());
    assert_eq!(
        clock.next_timer(),
        Some(start + ms(300)),
        "the schedule moved"
    );
    clock.advance_to(start + ms(300));
    assert_eq!(
        poll_next(ticks.as_mut()),
        Poll::Ready(Some(start + ms(300)))
    );
    // The consumer itself asks half a period late: the schedule restarts from that delivery.
    clock.advance_to(start + ms(450));
    assert_eq!(
        poll_next(ticks.as_mut()),
        Poll::Ready(Some(start + ms(400)))
    );
    assert!(poll_next(ticks.as_mut()).is_pending());
    assert_eq!(clock.next_timer(), Some(start + ms(550)));
}

/// Finding 3. `Interval`: "a consumer that asked for a tick in time gets it at its jittered
/// wake-up, however often its task is polled before then".
#[test]
fn a_poll_between_the_tick_and_its_jittered_wake_up_waits_for_the_wake_up() {
    let clock = FakeClock::new();
    let start = clock.now();
    let interval = interval_on(&clock, ms(1_000), MissedTicks::Skip).unwrap();
    let mut ticks = pin!(interval.jitter(ms(500), 1).unwrap());
    assert!(poll_next(ticks.as_mut()).is_pending());
    let wake = clock.next_timer().unwrap();
    assert!(wake > start + ms(1_000), "seed 1 draws some jitter");
    clock.advance_to(start + ms(1_000));
    assert!(
        poll_next(ticks.as_mut()).is_pending(),
        "a poll at the tick skipped the jitter"
    );
    clock.advance_to(wake);
    assert_eq!(
        poll_next(ticks.as_mut()),
        Poll::Ready(Some(start + ms(1_000)))
    );
}

/// Finding 3, as a user meets it: "so many intervals started together do not fire together",
/// also when they are merged into one task.
#[tokio::test(start_paused = true)]
async fn jittered_intervals_merged_in_one_task_fire_apart() {
    let tick = |seed| {
        let interval = interval_on(&Tokio, ms(1_000), MissedTicks::Skip).unwrap();
        interval.jitter(ms(500), seed).unwrap().map(|_| Tokio.now())
    };
    let mut both = pin!(stream::select(tick(1), tick(2)));
    let first = both.next().await.unwrap();
    let second = both.next().await.unwrap();
    assert_ne!(first, second, "both fired at the earlier wake-up");
}

// ---------------------------------------------------------------------------------------------
// write_atomic
// ---------------------------------------------------------------------------------------------

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// Finding 5. "The temporary file's name is the target's (at most its first 64 bytes, cut at
/// a character boundary) with a unique suffix of at most 46 bytes, so names near the file
/// system's limit fit."
#[tokio::test]
async fn write_atomic_replaces_a_file_named_with_240_bytes_of_4_byte_characters() {
    let dir = tempfile::tempdir().unwrap();
    let name = "😀".repeat(60);
    assert_eq!(name.len(), 240);
    let path = dir.path().join(&name);
    std::fs::write(&path, "old").unwrap();
    write_atomic(&Tokio, &path, b"new".to_vec()).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(entries(dir.path()), 1, "a temporary file was left");
}

/// Set in the child process that replaces the file as an unprivileged user.
#[cfg(unix)]
const SETID_CHILD: &str = "TIDEWALL_TEST_SETID_DIR";
#[cfg(unix)]
const NOBODY: u32 = 65_534;

/// The mode's permission bits, in octal.
#[cfg(unix)]
fn mode(path: &Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    format!(
        "{:o}",
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    )
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(unix)]
fn replace(path: &Path) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime
        .block_on(write_atomic(&Tokio, path, b"new".to_vec()))
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"new");
}

/// Finding 8. "carrying over the old file's permissions: set when the file is created and
/// again after the contents are written, since a write by a process without `CAP_FSETID`
/// clears the setuid and setgid bits". Root has that capability, so as root the file is also
/// replaced by a child process running as an unprivileged user.
#[cfg(unix)]
#[test]
fn write_atomic_keeps_the_setuid_and_setgid_bits() {
    use std::os::unix::fs::MetadataExt as _;
    use std::os::unix::process::CommandExt as _;
    if let Some(dir) = std::env::var_os(SETID_CHILD) {
        replace(&Path::new(&dir).join("tool"));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tool = dir.path().join("tool");
    std::fs::write(&tool, "old").unwrap();
    set_mode(&tool, 0o6755);
    let uid = std::fs::metadata(&tool).unwrap().uid();
    replace(&tool);
    assert_eq!(mode(&tool), "6755", "replaced by uid {uid}");
    if uid != 0 {
        return;
    }
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::write(&tool, "old").unwrap();
    std::os::unix::fs::chown(&tool, Some(NOBODY), Some(NOBODY)).unwrap();
    set_mode(&tool, 0o6755);
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "write_atomic_keeps_the_setuid_and_setgid_bits"])
        .args(["--test-threads", "1"])
        .env(SETID_CHILD, dir.path())
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(child.status.success(), "child: {child:?}");
    assert_eq!(std::fs::metadata(&tool).unwrap().uid(), NOBODY);
    assert_eq!(mode(&tool), "6755", "replaced by uid {NOBODY}");
}
