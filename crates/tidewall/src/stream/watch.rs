//! `watch_dir`: debounced changes under a directory, as a stream (feature `watch`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_channel::mpsc;
use futures_core::Stream;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::rt::Runtime;
use crate::time::positive_duration;

/// Events buffered between the OS watcher and the stream; beyond this, changes are dropped
/// and the next batch says so ([`DirChanges::overflowed`]).
const BUFFER: usize = 1024;

/// The most distinct paths one batch holds: past it, the batch is marked overflowed (rescan)
/// instead of growing with every path a debounce window sees.
const MAX_PATHS: usize = 65_536;

/// One debounced batch of changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirChanges {
    /// The paths that changed (created, modified, removed, renamed, or closed after being
    /// opened for writing: the OS does not say whether anything was written), sorted, each
    /// once. Opening a file to read it, or reading it, is not a change.
    pub paths: Vec<PathBuf>,
    /// Some events were dropped because the consumer fell behind: rescan the directory.
    pub overflowed: bool,
}

/// Why watching failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum WatchError {
    /// The configuration was invalid (a zero debounce, or one beyond `u64` nanoseconds).
    Config(crate::ConfigError),
    /// The OS watcher failed.
    Notify(notify::Error),
}

impl std::fmt::Display for WatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(e) => write!(f, "{e}"),
            Self::Notify(e) => write!(f, "watching failed: {e}"),
        }
    }
}

impl std::error::Error for WatchError {}

/// Changes under a directory, debounced: after the first change, everything within
/// `debounce` is gathered into one [`DirChanges`]. Backed by the `notify` crate (inotify on
/// Linux). Bounded: at most 1024 raw events wait, and a batch holds at most 65,536 distinct
/// paths; past either, the rest are dropped and the batch is marked `overflowed`. The stream
/// ends only if the watcher stops.
pub struct DirWatch<R: Runtime> {
    // Kept alive for as long as the stream: dropping it stops watching.
    _watcher: RecommendedWatcher,
    events: mpsc::Receiver<notify::Result<Vec<PathBuf>>>,
    overflowed: Arc<AtomicBool>,
    rt: R,
    debounce: Duration,
    pending: BTreeSet<PathBuf>,
    timer: Option<Pin<Box<R::Sleep>>>,
}

impl<R: Runtime> std::fmt::Debug for DirWatch<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatch")
            .field("debounce", &self.debounce)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> DirWatch<R> {
    pub(super) fn new(rt: R, dir: &Path, debounce: Duration) -> Result<Self, WatchError> {
        positive_duration("debounce", debounce).map_err(WatchError::Config)?;
        let (mut tx, events) = queue();
        let overflowed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&overflowed);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reading a file is no change to it (and a consumer that reads what changed
                // would otherwise wake itself forever).
                if event.as_ref().is_ok_and(|event| is_read(event.kind)) {
                    return;
                }
                // The OS dropped events (inotify's queue overflowed): the consumer must rescan.
                if event.as_ref().is_ok_and(notify::Event::need_rescan) {
                    flag.store(true, Ordering::Relaxed);
                }
                if tx.try_send(event.map(|e| e.paths)).is_err() {
                    flag.store(true, Ordering::Relaxed);
                }
            })
            .map_err(WatchError::Notify)?;
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .map_err(WatchError::Notify)?;
        Ok(Self {
            _watcher: watcher,
            events,
            overflowed,
            rt,
            debounce,
            pending: BTreeSet::new(),
            timer: None,
        })
    }

    fn take(&mut self) -> DirChanges {
        self.timer = None;
        DirChanges {
            paths: std::mem::take(&mut self.pending).into_iter().collect(),
            overflowed: self.overflowed.swap(false, Ordering::Relaxed),
        }
    }
}

/// The raw events' queue: exactly `BUFFER` of them fit (mpsc's buffer is its bound plus one
/// slot per sender, and there is one sender).
fn queue<T>() -> (mpsc::Sender<T>, mpsc::Receiver<T>) {
    mpsc::channel(BUFFER - 1)
}

/// Whether an event only says a file was opened, read or closed unwritten.
fn is_read(kind: notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    matches!(kind, EventKind::Access(access) if access != AccessKind::Close(AccessMode::Write))
}

impl<R: Runtime> Unpin for DirWatch<R> {}

impl<R: Runtime> Stream for DirWatch<R> {
    type Item = Result<DirChanges, WatchError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.events).poll_next(cx) {
                Poll::Ready(Some(Ok(paths))) => {
                    if this.timer.is_none() {
                        this.timer = Some(Box::pin(this.rt.sleep(this.debounce)));
                    }
                    for path in paths {
                        if this.pending.len() < MAX_PATHS || this.pending.contains(&path) {
                            this.pending.insert(path);
                        } else {
                            this.overflowed.store(true, Ordering::Relaxed);
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(WatchError::Notify(e)))),
                Poll::Ready(None) => {
                    return Poll::Ready((!this.pending.is_empty()).then(|| Ok(this.take())));
                }
                Poll::Pending => break,
            }
        }
        let Some(timer) = this.timer.as_mut() else {
            return Poll::Pending;
        };
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Some(Ok(this.take())))
    }
}

use std::future::Future as _;

#[cfg(test)]
mod tests {
    /// "At most 1024 raw events wait": the 1025th is refused (and so counted as a drop).
    #[test]
    fn exactly_buffer_raw_events_wait() {
        let (mut tx, _rx) = super::queue();
        for n in 0..super::BUFFER {
            assert!(tx.try_send(n).is_ok(), "event {n} refused");
        }
        assert!(tx.try_send(super::BUFFER).unwrap_err().is_full());
    }
}
