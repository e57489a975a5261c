//! `write_atomic` dropped at every await point leaves the old file or the complete new one.

#[path = "common/ready_later.rs"]
mod ready_later;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll, Waker};

use ready_later::ReadyLater;
use tidewall::fs::write_atomic;
use tidewall::rt::Spawn;

/// A runtime whose blocking work runs at once, but whose handles report it one poll later:
/// every await point of the writer becomes an exact, repeatable suspension. Blocking job
/// number `cancel_at` (from 0), if any, is dropped unrun and its handle reports
/// `JoinError::Cancelled`, as tokio's do for jobs not started at shutdown.
#[derive(Clone, Default)]
struct Stepwise {
    jobs: Arc<AtomicUsize>,
    cancel_at: Option<usize>,
}

impl Spawn for Stepwise {
    type JoinHandle<T: Send + 'static> = ReadyLater<T>;

    fn spawn<F>(&self, _: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        unreachable!("write_atomic only uses spawn_blocking")
    }

    fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        if Some(self.jobs.fetch_add(1, SeqCst)) == self.cancel_at {
            drop(work);
            ReadyLater::new(None)
        } else {
            ReadyLater::new(Some(work()))
        }
    }
}

/// Polls a write over `Stepwise` handles to its end (each suspension is one poll long).
fn run_stepwise<T>(fut: impl Future<Output = T>) -> T {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..100 {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("a stepwise write did not finish in 100 polls")
}

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn dropped_at_every_await_point_leaves_old_or_new_never_partial() {
    let old = b"old contents".to_vec();
    let new = vec![b'N'; 64 * 1024];
    let mut saw_old = false;
    let mut saw_new = false;
    for polls_before_drop in 0..=12 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, &old).unwrap();
        let rt = Stepwise::default();
        let mut write = Box::pin(write_atomic(&rt, &path, new.clone()));
        let mut cx = Context::from_waker(Waker::noop());
        let mut finished = false;
        for _ in 0..polls_before_drop {
            if let Poll::Ready(result) = write.as_mut().poll(&mut cx) {
                result.unwrap();
                finished = true;
                break;
            }
        }
        drop(write);
        let contents = std::fs::read(&path).unwrap();
        assert!(
            contents == old || contents == new,
            "partial file after {polls_before_drop} polls"
        );
        saw_old |= contents == old;
        saw_new |= contents == new;
        assert_eq!(
            entries(dir.path()),
            ["state.json"],
            "temporary file left after {polls_before_drop} polls"
        );
        if finished {
            assert_eq!(contents, new);
        }
    }
    assert!(saw_old && saw_new, "both outcomes must have been exercised");
}

// "A blocking step ... that its runtime cancelled ... is reported as an io::Error of kind
// Other, never Interrupted."
#[test]
fn a_cancelled_step_is_other_never_interrupted_and_leaves_old_or_new() {
    let old = b"old".to_vec();
    let new = b"new contents".to_vec();
    let mut cancelled_steps = 0;
    for cancel_at in 0.. {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg");
        std::fs::write(&path, &old).unwrap();
        let rt = Stepwise {
            cancel_at: Some(cancel_at),
            ..Stepwise::default()
        };
        let result = run_stepwise(write_atomic(&rt, &path, new.clone()));
        let contents = std::fs::read(&path).unwrap();
        let Err(e) = result else {
            // Every step ran: `cancel_at` is past the last one.
            assert_eq!(contents, new);
            break;
        };
        cancelled_steps += 1;
        assert_eq!(e.kind(), io::ErrorKind::Other, "step {cancel_at}: {e}");
        assert!(e.to_string().contains("cancelled"), "step {cancel_at}: {e}");
        assert!(
            contents == old || contents == new,
            "step {cancel_at}: partial file"
        );
        let leftovers = entries(dir.path());
        // A cancelled create leaves no file to remove, and a cancelled rename's file is removed
        // with the dropped job; the first steps leave the target untouched.
        assert_eq!(leftovers, ["cfg"], "step {cancel_at}: temporary file left");
    }
    assert!(
        cancelled_steps >= 4,
        "create, write, rename and sync: {cancelled_steps}"
    );
}

#[tokio::test]
async fn creates_and_replaces_on_tokio_keeping_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.txt");
    write_atomic(&tidewall::rt::Tokio, &path, b"one".to_vec())
        .await
        .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    write_atomic(&tidewall::rt::Tokio, &path, b"two".to_vec())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"two");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }
    assert_eq!(entries(dir.path()), ["out.txt"]);
}

#[tokio::test]
async fn a_path_without_a_file_name_is_an_error() {
    let err = write_atomic(&tidewall::rt::Tokio, "/", b"x".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

/// A file name near the file system's limit (255 bytes) is written too: the temporary file
/// beside it takes only part of the name, not all of it plus a suffix.
#[test]
fn a_name_near_the_file_systems_limit_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n".repeat(240));
    let rt = Stepwise::default();
    let mut write = Box::pin(write_atomic(&rt, &path, b"long".to_vec()));
    let mut cx = Context::from_waker(Waker::noop());
    let written = loop {
        if let Poll::Ready(written) = write.as_mut().poll(&mut cx) {
            break written;
        }
    };
    written.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"long");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file left");
}
