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

/// How many of the bytes just before the read offset every check reads again (in the same
/// read as the new bytes) and compares with what it read there before: a file truncated and
/// written past that offset between two checks shows up as a difference.
const TAIL: usize = 64;

/// The file being followed, kept open across checks so that a rotated file is read to its
/// end before the new one is opened.
struct Open {
    file: File,
    id: u64,
    offset: u64,
    /// The last (at most `TAIL`) bytes before `offset`, as they were read.
    tail: Vec<u8>,
}

/// Where a check began in the file it had open: what a check lost with that file (to a
/// panic, or its runtime cancelling it) leaves to go on from.
#[derive(Clone)]
struct Position {
    id: u64,
    offset: u64,
    tail: Vec<u8>,
}

impl Open {
    fn position(&self) -> Position {
        Position {
            id: self.id,
            offset: self.offset,
            tail: self.tail.clone(),
        }
    }

    fn rewind(&mut self) {
        self.offset = 0;
        self.tail.clear();
    }
}

/// What one check found.
struct Check {
    data: Vec<u8>,
    /// The data starts a new file (rotation, truncation): drop any partial line.
    restarted: bool,
    /// More bytes are waiting: check again at once.
    more: bool,
}

impl Check {
    fn nothing() -> Self {
        Self {
            data: Vec::new(),
            restarted: false,
            more: false,
        }
    }
}

/// The open file travels into the blocking check and back.
type Checked = (Option<Open>, io::Result<Check>);

/// Follows a file like `tail -F`: yields each complete line appended to it.
///
/// The file is looked at only while the stream is polled. Each check runs on a blocking
/// task: the first is started by the first poll; each next one by a poll that comes
/// `period` or more after the previous one's result was taken (which also debounces bursts
/// of writes), or at once when that check left bytes unread (more than 1 MiB were waiting)
/// or let a rotated or truncated file go. Whatever happens to the file while the stream is
/// not polled is seen by the next check, with these guarantees:
///
/// - **Appends** are read from the file the follower keeps open.
/// - **Rotation** (the path renamed away, and perhaps a new file created under it): each
///   check looks at the path *before* it reads the open file to its end, so every byte
///   written to the old file before its rename is read before the old file is let go; then
///   the file now at the path is read from its start. Bytes written to the old file after its
///   rename (by a writer that still has it open) are read if they land before the check
///   that notices the rename, and lost after it. If the path was replaced more than once
///   since the last check, the file the follower had open and the one now at the path are
///   read: the ones in between came and went unseen.
/// - **Truncation in place** (copy-then-truncate rotation): a check notices it when the file
///   is shorter than what was read, or when the (up to) 64 bytes before that point are no
///   longer the ones read there; the file is then read again from its start. Lines that were in the
///   file before the truncation and not yet read are gone with it (they are in the copy). A
///   file truncated and written past that point with the very same bytes there (a log of
///   identical lines) is taken as unchanged, and its start as already read.
/// - **A missing file** is waited for, and read from its start when it appears.
///
/// It starts where the file is when the follower is built: building it opens the file on
/// the calling thread (a `stat`, an `open` and, from the end, a read of at most 64 bytes),
/// at its end, or at its start with `from_start`. So lines appended as soon as
/// [`follow_on`](super::follow_on) returns are delivered, and the guarantees above hold
/// from then on. A file that does not exist yet, is not a regular file (a FIFO is not
/// opened there: that could block), or cannot be opened or read then, is read from its
/// start when a check first opens it. Started at an end inside a line (the file does not
/// end with a newline), the rest of that line is skipped: the first line delivered is the
/// first that starts after the follower's start.
///
/// A partial last line is held until its newline arrives; a partial last line left in a
/// file that was rotated or truncated is dropped. A line longer than `max_line` bytes is
/// delivered as an `InvalidData` error and skipped. An I/O error is delivered as an item,
/// and the follower checks again a period later. So is a check lost to a panic or to its
/// runtime (a blocking job cancelled): the next check goes on from where the lost one began,
/// in the same file if the path still names it (a file rotated away meanwhile is let go, and
/// the one now at the path read from its start). The stream never ends: drop it to stop
/// following.
///
/// Rotation is recognised by inode: on platforms without one (not Unix) a renamed file is
/// followed on, and the new file at the path is read only if a check found no file there
/// in between.
///
/// Building it needs no runtime (it spawns nothing): it may be built outside one and
/// polled inside one.
///
/// **Cancel safety:** dropping it detaches at most one in-flight check, which then ends on
/// its own.
///
/// ```
/// use std::io::Write as _;
/// use std::time::Duration;
/// use futures_util::StreamExt as _;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("app.log");
/// std::fs::write(&path, "started\n")?;
/// let period = Duration::from_millis(100);
/// let mut lines = tidewall::stream::follow_on(&tidewall::rt::Tokio, &path, period, 4096, true)?;
/// assert_eq!(lines.next().await.unwrap()?, b"started");
/// // Rotation while the stream is not polled: a last line, a rename, a new file.
/// std::fs::OpenOptions::new().append(true).open(&path)?.write_all(b"last words\n")?;
/// std::fs::rename(&path, dir.path().join("app.log.1"))?;
/// std::fs::write(&path, "fresh\n")?;
/// assert_eq!(lines.next().await.unwrap()?, b"last words");
/// assert_eq!(lines.next().await.unwrap()?, b"fresh");
/// # Ok(()) }
/// ```
pub struct Follow<R: Runtime> {
    rt: R,
    path: PathBuf,
    period: Duration,
    splitter: Splitter,
    ready: VecDeque<io::Result<Vec<u8>>>,
    state: State<R>,
    /// Where the check in flight began.
    checking_from: Option<Position>,
    /// Where a lost check began: the next check goes on from there.
    resume: Option<Position>,
}

enum State<R: Runtime> {
    /// A check is due at the next poll.
    Due(Option<Open>),
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
        // The partial line grows up to `max_line` bytes: the bound every reader keeps.
        if max_line > super::MAX_BUFFER {
            return Err(ConfigError::OutOfRange {
                field: "max_line",
                // Exact for any size up to 2^53 bytes.
                #[allow(clippy::cast_precision_loss)]
                value: max_line as f64,
                allowed: "at most 1 GiB (stream::MAX_BUFFER)",
            });
        }
        let open = open_first(path, from_start);
        let mut splitter = Splitter::new(max_line);
        // The line the start is in began before it: not one of the lines appended since.
        splitter.skipping = open
            .as_ref()
            .is_some_and(|open| open.tail.last().is_some_and(|&byte| byte != b'\n'));
        Ok(Self {
            rt,
            path: path.to_owned(),
            period,
            splitter,
            ready: VecDeque::new(),
            state: State::Due(open),
            checking_from: None,
            resume: None,
        })
    }

    fn check_now(&mut self, open: Option<Open>) {
        let path = self.path.clone();
        let resume = match &open {
            Some(open) => {
                self.checking_from = Some(open.position());
                None
            }
            // A check that resumes begins where the lost one did: if it is lost too, the
            // next goes on from there still.
            None => {
                let resume = self.resume.take();
                self.checking_from.clone_from(&resume);
                resume
            }
        };
        self.state = State::Checking(
            self.rt
                .spawn_blocking(move || check(&path, open, resume, &mut || {})),
        );
    }

    fn wait(&mut self, open: Option<Open>) {
        self.state = State::Waiting(open, Box::pin(self.rt.sleep(self.period)));
    }
}

/// Cuts the bytes read into complete lines, holding the partial last one.
struct Splitter {
    max_line: usize,
    partial: Vec<u8>,
    /// Inside a line that was already reported as too long, or that began before the
    /// follower's start: drop up to its newline.
    skipping: bool,
}

impl Splitter {
    fn new(max_line: usize) -> Self {
        Self {
            max_line,
            partial: Vec::new(),
            skipping: false,
        }
    }

    /// The bytes that follow start a new file: forget the partial line.
    fn restart(&mut self) {
        self.partial.clear();
        self.skipping = false;
    }

    fn split(&mut self, data: &[u8], out: &mut VecDeque<io::Result<Vec<u8>>>) {
        let mut rest = data;
        while let Some(at) = memchr::memchr(b'\n', rest) {
            let (piece, tail) = (&rest[..at], &rest[at + 1..]);
            rest = tail;
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            if self.partial.len() + piece.len() > self.max_line {
                self.partial.clear();
                out.push_back(Err(too_long(self.max_line)));
                continue;
            }
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(piece);
            out.push_back(Ok(line));
        }
        if self.skipping {
            return;
        }
        if self.partial.len() + rest.len() > self.max_line {
            self.partial.clear();
            self.skipping = true;
            out.push_back(Err(too_long(self.max_line)));
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

/// One check of the file, on a blocking thread. `step` runs before each file-system call
/// (a no-op outside tests, where it changes the files between any two calls).
fn check(
    path: &Path,
    open: Option<Open>,
    resume: Option<Position>,
    step: &mut impl FnMut(),
) -> Checked {
    let Some(open) = open else {
        return open_path(path, resume, step);
    };
    // The path is looked at *before* the open file's length is taken (in `read_new`): a
    // rename seen here happened before that, so every byte written to the old file before
    // its rename is within that length and is read before the file is let go.
    step();
    let replaced = match std::fs::metadata(path) {
        Ok(meta) => file_id(&meta) != open.id,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        // Whether it was replaced is unknown: keep the file, say why, look again later.
        Err(e) => return (Some(open), Err(e)),
    };
    match read_new(open, false, step) {
        // Drained a file the path no longer names: the next check opens whatever is there
        // now, from its start.
        (Some(_), Ok(check)) if replaced && !check.more => (
            None,
            Ok(Check {
                more: true,
                ..check
            }),
        ),
        other => other,
    }
}

/// The file at `path` as the follower is built, opened at its end unless `from_start`; `None`
/// when there is none, it is not a regular file, or it cannot be opened or read now.
fn open_first(path: &Path, from_start: bool) -> Option<Open> {
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    let mut open = Open {
        file,
        id: file_id(&meta),
        offset: 0,
        tail: Vec::new(),
    };
    if !from_start {
        // Start at the end, knowing the bytes just before it (to notice a rewrite).
        let start = meta.len().saturating_sub(TAIL as u64);
        let mut tail = vec![0; usize::try_from(meta.len() - start).unwrap_or(TAIL)];
        let n = read_at(&mut open.file, start, &mut tail).ok()?;
        tail.truncate(n);
        open.offset = start + n as u64;
        open.tail = tail;
    }
    Some(open)
}

/// Opens the file at `path` from its start: one that was not open since the follower was
/// built is new (it appeared, or replaced the followed one). Unless it is the file a lost
/// check had open (`resume`): that one is read on from where the lost check began (a
/// truncation since is noticed as on any check).
fn open_path(path: &Path, resume: Option<Position>, step: &mut impl FnMut()) -> Checked {
    step();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return (None, Ok(Check::nothing())),
        Err(e) => return (None, Err(e)),
    };
    step();
    let meta = match file.metadata() {
        Ok(meta) => meta,
        Err(e) => return (None, Err(e)),
    };
    let id = file_id(&meta);
    let (at, restarted) = match resume.filter(|at| at.id == id) {
        Some(at) => (at, false),
        // A newly opened file is a new start: drop any partial line of the old.
        None => (
            Position {
                id,
                offset: 0,
                tail: Vec::new(),
            },
            true,
        ),
    };
    let open = Open {
        file,
        id,
        offset: at.offset,
        tail: at.tail,
    };
    read_new(open, restarted, step)
}

/// Reads up to `CHUNK` new bytes from the open file, after checking that it was not
/// truncated since the last read (else it is read again from its start).
fn read_new(mut open: Open, mut restarted: bool, step: &mut impl FnMut()) -> Checked {
    step();
    let len = match open.file.metadata() {
        Ok(meta) => meta.len(),
        Err(e) => return (Some(open), Err(e)),
    };
    if len < open.offset {
        open.rewind();
        restarted = true;
    }
    let keep = open.tail.len();
    let want = usize::try_from((len - open.offset).min(CHUNK)).unwrap_or(0);
    let mut data = vec![0; keep + want];
    step();
    // One read covers the remembered tail and the new bytes, so the comparison below is
    // about the very bytes that follow it.
    let n = match read_at(&mut open.file, open.offset - keep as u64, &mut data) {
        Ok(n) => n,
        Err(e) => return (Some(open), Err(e)),
    };
    data.truncate(n);
    if data.get(..keep) != Some(&open.tail[..]) {
        // Truncated (and written again past the offset) since the last read.
        open.rewind();
        let check = Check {
            data: Vec::new(),
            restarted: true,
            more: true,
        };
        return (Some(open), Ok(check));
    }
    data.drain(..keep);
    open.offset += data.len() as u64;
    open.tail
        .extend_from_slice(&data[data.len().saturating_sub(TAIL)..]);
    let excess = open.tail.len().saturating_sub(TAIL);
    open.tail.drain(..excess);
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

/// Fills `buf` from `at`, stopping early only at the end of the file.
fn read_at(file: &mut File, at: u64, buf: &mut [u8]) -> io::Result<usize> {
    file.seek(SeekFrom::Start(at))?;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(unix)]
fn file_id(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.ino() ^ meta.dev().rotate_left(32)
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> u64 {
    // Without inodes every file looks the same: a rotation is noticed only through a
    // truncation or a check that finds no file at the path.
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
                State::Due(open) => {
                    let open = open.take();
                    this.check_now(open);
                }
                State::Waiting(_, sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    let State::Waiting(open, _) = std::mem::replace(&mut this.state, State::Moving)
                    else {
                        return Poll::Pending;
                    };
                    this.check_now(open);
                }
                State::Checking(handle) => {
                    let joined = ready!(Pin::new(handle).poll(cx));
                    let from = this.checking_from.take();
                    let (open, checked) = match joined {
                        // Opened nothing and failed (the path could not be opened, say): the
                        // next check still goes on from where this one began.
                        Ok((None, Err(e))) => {
                            this.resume = from;
                            (None, Err(e))
                        }
                        Ok(done) => done,
                        Err(lost) => {
                            // The open file went with the check: the next one goes on from
                            // where this one began.
                            this.resume = from;
                            let what = match lost {
                                JoinError::Panicked(_) => "the file check panicked",
                                JoinError::Cancelled => "the file check was cancelled",
                            };
                            (None, Err(io::Error::other(what)))
                        }
                    };
                    match checked {
                        Ok(check) => {
                            if check.restarted {
                                this.splitter.restart();
                            }
                            this.splitter.split(&check.data, &mut this.ready);
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

#[cfg(test)]
#[path = "follow_interleavings.rs"]
mod interleavings;
