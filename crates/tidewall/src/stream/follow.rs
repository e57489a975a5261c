//! `follow`: the lines appended to a file, `tail -F` style, surviving rotation.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future as _;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;

use crate::ConfigError;
use crate::rt::{JoinError, Runtime};
use crate::time::positive_duration;

/// The most bytes one check reads; a file growing faster is read in several checks, back to
/// back, without waiting for the next period.
const CHUNK: u64 = 1 << 20;

/// The file being followed, kept open across checks so that a rotated file is read to its
/// end before the new one is opened (no line written just before a rotation is lost).
struct Open {
    file: File,
    id: u64,
    offset: u64,
}

/// What one check found.
struct Check {
    data: Vec<u8>,
    /// The data starts a new file (rotation, truncation): drop any partial line.
    restarted: bool,
    /// More bytes are waiting: check again at once.
    more: bool,
}

/// The open file travels into the blocking check and back.
type Checked = (Option<Open>, io::Result<Check>);

/// Follows a file like `tail -F`: yields each complete line appended to it.
///
/// Every `period` (which also debounces bursts of writes) a blocking task checks the file.
/// The follower keeps the file open: new bytes are read from it; when the path now names
/// another file (rotation), the old one is read to its end first, then the new one from its
/// start; a file truncated in place is read again from its start; a missing file is waited
/// for, and read from its start when it appears. A partial last line is held until its
/// newline arrives (at most `max_line` bytes; a longer line is delivered as an `InvalidData`
/// error and skipped). The stream never ends: drop it to stop following.
///
/// Like `tail -F`, a copy-then-truncate rotation is seen only if a check runs while the file
/// is shorter than what was read; if it has already grown past that point, the bytes before
/// it are taken as old.
///
/// **Cancel safety:** dropping it detaches at most one in-flight check.
pub struct Follow<R: Runtime> {
    rt: R,
    path: PathBuf,
    period: Duration,
    max_line: usize,
    from_start: bool,
    partial: Vec<u8>,
    skipping: bool,
    ready: VecDeque<io::Result<Vec<u8>>>,
    state: State<R>,
}

enum State<R: Runtime> {
    Waiting(Option<Open>, Pin<Box<R::Sleep>>),
    Checking(R::JoinHandle<Checked>),
    /// Between states (never observed outside `poll_next`).
    Moving,
}

impl<R: Runtime> std::fmt::Debug for Follow<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("path", &self.path)
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime> Follow<R> {
    pub(super) fn new(
        rt: R,
        path: &Path,
        period: Duration,
        max_line: usize,
        from_start: bool,
    ) -> Result<Self, ConfigError> {
        positive_duration("period", period)?;
        if max_line == 0 {
            return Err(ConfigError::Zero { field: "max_line" });
        }
        let mut follow = Self {
            rt,
            path: path.to_owned(),
            period,
            max_line,
            from_start,
            partial: Vec::new(),
            skipping: false,
            ready: VecDeque::new(),
            state: State::Moving,
        };
        follow.check_now(None);
        Ok(follow)
    }

    fn check_now(&mut self, open: Option<Open>) {
        let (path, from_start) = (self.path.clone(), self.from_start);
        self.state = State::Checking(
            self.rt
                .spawn_blocking(move || check(&path, open, from_start)),
        );
        // Only the very first look at an existing file starts at its end: a file that appears
        // (or replaces the followed one) later is new, and read from its start.
        self.from_start = true;
    }

    fn wait(&mut self, open: Option<Open>) {
        self.state = State::Waiting(open, Box::pin(self.rt.sleep(self.period)));
    }

    /// Splits fresh bytes into complete lines, keeping the partial last one.
    fn take_lines(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(at) = memchr::memchr(b'\n', rest) {
            let (piece, tail) = (&rest[..at], &rest[at + 1..]);
            rest = tail;
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            if self.partial.len() + piece.len() > self.max_line {
                self.partial.clear();
                self.ready.push_back(Err(too_long(self.max_line)));
                continue;
            }
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(piece);
            self.ready.push_back(Ok(line));
        }
        if self.skipping {
            return;
        }
        if self.partial.len() + rest.len() > self.max_line {
            self.partial.clear();
            self.skipping = true;
            self.ready.push_back(Err(too_long(self.max_line)));
        } else {
            self.partial.extend_from_slice(rest);
        }
    }
}

fn too_long(max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("a line is longer than {max} bytes"),
    )
}

/// One check of the file, on a blocking thread.
fn check(path: &Path, open: Option<Open>, from_start: bool) -> Checked {
    let mut open = match open {
        Some(open) => open,
        None => match File::open(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return (
                    None,
                    Ok(Check {
                        data: Vec::new(),
                        restarted: false,
                        more: false,
                    }),
                );
            }
            Err(e) => return (None, Err(e)),
            Ok(file) => match file.metadata() {
                Err(e) => return (None, Err(e)),
                Ok(meta) => {
                    let offset = if from_start { 0 } else { meta.len() };
                    let open = Open {
                        file,
                        id: file_id(&meta),
                        offset,
                    };
                    // A newly opened file is a new start: drop any partial line of the old.
                    return match read_new(open, true) {
                        (open, Ok(check)) => (open, Ok(check)),
                        (open, Err(e)) => (open, Err(e)),
                    };
                }
            },
        },
    };
    let len = match open.file.metadata() {
        Ok(meta) => meta.len(),
        Err(e) => return (Some(open), Err(e)),
    };
    let mut restarted = false;
    if len < open.offset {
        // Truncated in place: read it again from the start.
        open.offset = 0;
        restarted = true;
    }
    let (open, checked) = read_new(open, restarted);
    let Some(open) = open else {
        return (None, checked);
    };
    let Ok(check) = checked else {
        return (Some(open), checked);
    };
    if !check.more {
        // Drained: if the path now names another file (or none), that was a rotation; the
        // next check opens whatever is there now, from its start.
        let replaced = std::fs::metadata(path).map_or(true, |meta| file_id(&meta) != open.id);
        if replaced {
            return (
                None,
                Ok(Check {
                    more: true,
                    ..check
                }),
            );
        }
    }
    (Some(open), Ok(check))
}

/// Reads up to `CHUNK` new bytes from the open file.
fn read_new(mut open: Open, restarted: bool) -> Checked {
    let len = match open.file.metadata() {
        Ok(meta) => meta.len(),
        Err(e) => return (Some(open), Err(e)),
    };
    let want = len.saturating_sub(open.offset).min(CHUNK);
    let mut data = vec![0; usize::try_from(want).unwrap_or(0)];
    let read = open
        .file
        .seek(SeekFrom::Start(open.offset))
        .and_then(|_| open.file.read(&mut data));
    match read {
        Ok(n) => {
            data.truncate(n);
            open.offset += n as u64;
            let more = open.offset < len;
            (
                Some(open),
                Ok(Check {
                    data,
                    restarted,
                    more,
                }),
            )
        }
        Err(e) => (Some(open), Err(e)),
    }
}

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.ino() ^ meta.dev().rotate_left(32)
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> u64 {
    // Without inodes, rotation is detected by truncation only.
    0
}

impl<R: Runtime> Unpin for Follow<R> {}

impl<R: Runtime> Stream for Follow<R> {
    type Item = io::Result<Vec<u8>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(line) = this.ready.pop_front() {
                return Poll::Ready(Some(line));
            }
            match &mut this.state {
                State::Waiting(_, sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    let State::Waiting(open, _) = std::mem::replace(&mut this.state, State::Moving)
                    else {
                        return Poll::Pending;
                    };
                    this.check_now(open);
                }
                State::Checking(handle) => {
                    let (open, checked) = match ready!(Pin::new(handle).poll(cx)) {
                        Ok(done) => done,
                        Err(JoinError::Panicked(_)) => {
                            (None, Err(io::Error::other("the file check panicked")))
                        }
                        Err(_) => (None, Err(io::Error::other("the file check was cancelled"))),
                    };
                    match checked {
                        Ok(check) => {
                            if check.restarted {
                                this.partial.clear();
                                this.skipping = false;
                            }
                            this.take_lines(&check.data);
                            if check.more {
                                this.check_now(open)
                            } else {
                                this.wait(open)
                            }
                        }
                        Err(e) => {
                            this.wait(open);
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                State::Moving => {
                    // Not reachable: `Moving` only bridges two assignments above. Stay live.
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        }
    }
}
