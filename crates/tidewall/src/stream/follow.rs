//! `follow`: the lines appended to a file, `tail -f` style, surviving rotation.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_core::Stream;

use super::pace::validate_period;
use crate::ConfigError;
use crate::rt::{JoinError, Runtime};

/// The most bytes one check reads; a file growing faster is read in several checks, back to
/// back, without waiting for the next period.
const CHUNK: u64 = 1 << 20;

/// Where the follower is in which file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    file_id: u64,
    offset: u64,
}

/// What one check found.
struct Check {
    position: Option<Position>,
    data: Vec<u8>,
    rotated: bool,
    more: bool,
}

/// Follows a file like `tail -F`: yields each complete line appended to it.
///
/// Every `period` (which also debounces bursts of writes) a blocking task checks the file:
/// new bytes are read and split into lines; a file replaced by another (a new inode: log
/// rotation) or truncated is read again from its start; a missing file is waited for. A
/// partial last line is held until its newline arrives (at most `max_line` bytes; a longer
/// line is delivered as an `InvalidData` error and skipped). The stream never ends: drop it to
/// stop following.
///
/// **Cancel safety:** dropping it detaches at most one in-flight check.
pub struct Follow<R: Runtime> {
    rt: R,
    path: PathBuf,
    period: Duration,
    max_line: usize,
    position: Option<Position>,
    from_start: bool,
    partial: Vec<u8>,
    skipping: bool,
    ready: VecDeque<io::Result<Vec<u8>>>,
    state: State<R>,
}

enum State<R: Runtime> {
    Waiting(Pin<Box<R::Sleep>>),
    Checking(R::JoinHandle<io::Result<Check>>),
}

impl<R: Runtime> std::fmt::Debug for Follow<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("path", &self.path)
            .field("position", &self.position)
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
        validate_period("period", period)?;
        if max_line == 0 {
            return Err(ConfigError::Zero { field: "max_line" });
        }
        let path = path.to_owned();
        let first = {
            let path = path.clone();
            rt.spawn_blocking(move || check(&path, None, from_start))
        };
        Ok(Self {
            rt,
            path,
            period,
            max_line,
            position: None,
            from_start,
            partial: Vec::new(),
            skipping: false,
            ready: VecDeque::new(),
            state: State::Checking(first),
        })
    }

    fn check_now(&mut self) {
        let (path, position, from_start) = (self.path.clone(), self.position, self.from_start);
        self.state = State::Checking(
            self.rt
                .spawn_blocking(move || check(&path, position, from_start)),
        );
    }

    fn wait(&mut self) {
        self.state = State::Waiting(Box::pin(self.rt.sleep(self.period)));
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
fn check(path: &Path, position: Option<Position>, from_start: bool) -> io::Result<Check> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Check {
                position,
                data: Vec::new(),
                rotated: false,
                more: false,
            });
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let file_id = file_id(&meta);
    let len = meta.len();
    let (offset, rotated) = match position {
        Some(p) if p.file_id == file_id && p.offset <= len => (p.offset, false),
        // A different file at that path, or the same one truncated: read it from the start.
        Some(_) => (0, true),
        // First look: `tail -f` starts at the end, unless asked to read what is there.
        None => (if from_start { 0 } else { len }, false),
    };
    let want = (len - offset).min(CHUNK);
    let mut data = vec![0; usize::try_from(want).unwrap_or(0)];
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(&mut data)?;
    Ok(Check {
        position: Some(Position {
            file_id,
            offset: offset + want,
        }),
        data,
        rotated,
        more: offset + want < len,
    })
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
                State::Waiting(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    this.check_now();
                }
                State::Checking(handle) => {
                    let checked = match ready!(Pin::new(handle).poll(cx)) {
                        Ok(checked) => checked,
                        Err(JoinError::Panicked(_)) => {
                            Err(io::Error::other("the file check panicked"))
                        }
                        Err(_) => Err(io::Error::other("the file check was cancelled")),
                    };
                    match checked {
                        Ok(check) => {
                            if check.rotated {
                                this.partial.clear();
                                this.skipping = false;
                            }
                            this.position = check.position;
                            this.take_lines(&check.data);
                            if check.more {
                                this.check_now()
                            } else {
                                this.wait()
                            }
                        }
                        Err(e) => {
                            this.wait();
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
            }
        }
    }
}

use std::future::Future as _;
