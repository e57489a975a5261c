//! `BlockingReader`: any `std::io::Read` (a file) as an async reader, on any runtime.

use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::io::AsyncRead;

use crate::ConfigError;
use crate::rt::{JoinError, Runtime};

/// One finished blocking read: the reader back, its buffer, and what the read returned.
type Chunk<F> = (F, Vec<u8>, io::Result<usize>);

/// Reads a blocking reader (a `std::fs::File`, a pipe) on the runtime's blocking threads, one
/// chunk ahead of the consumer.
///
/// Each chunk is one `read` of up to `chunk` bytes by [`spawn_blocking`](crate::rt::Spawn::spawn_blocking)
/// into one of two buffers: while the consumer works through one chunk, the next is being
/// read, so disk (or page-cache copies) and processing overlap. A pipe delivers what it has;
/// a regular file on a local disk fills whole chunks (a network or FUSE file system may
/// return less). Memory is two chunks, whatever the
/// file size. Runtime-agnostic: tokio's `fs::File` is tokio-only, and smol's is smol-only.
///
/// **Errors:** a failed read is returned once; reading again retries. A read that panicked
/// (or was cancelled by the runtime) loses the reader: that read and every later one fail.
///
/// **Cancel safety:** dropping the reader detaches an in-flight read (it finishes on its
/// blocking thread and is discarded). A read of a pipe or terminal that nobody writes to
/// never finishes, and a runtime that waits for its blocking threads on shutdown (tokio's)
/// then waits for it: close the writer, or shut the runtime down with a timeout. `new`
/// starts the first read at once, so it needs a runtime to spawn it on.
///
/// ```
/// use tidewall::rt::Tokio;
/// use tidewall::stream::{BlockingReader, LineReader, Overlong};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let file = std::io::Cursor::new(b"one\ntwo\nthree\n".to_vec());
/// let reader = BlockingReader::new(Tokio, file, 1 << 20)?;
/// let mut lines = LineReader::new(reader, 1 << 20, 1024, Overlong::Error)?;
/// let mut count = 0;
/// while let Some(batch) = lines.next_batch().await? {
///     count += batch.lines().count();
/// }
/// assert_eq!(count, 3);
/// # Ok(()) }
/// ```
pub struct BlockingReader<R: Runtime, F: Send + 'static> {
    rt: R,
    chunk: usize,
    /// The chunk being consumed, and how far.
    current: Vec<u8>,
    pos: usize,
    /// The read in flight (it owns the reader and the other buffer), or the idle reader.
    state: State<R, F>,
}

enum State<R: Runtime, F: Send + 'static> {
    Idle(Option<(F, Vec<u8>)>),
    Reading(R::JoinHandle<Chunk<F>>),
    Done,
    /// A blocking read panicked or was cancelled: the reader is gone.
    Lost(&'static str),
}

// Nothing in it is pinned: the reader moves in and out of blocking tasks by value.
impl<R: Runtime, F: Send + 'static> Unpin for BlockingReader<R, F> {}

impl<R: Runtime, F: Send + 'static> std::fmt::Debug for BlockingReader<R, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingReader")
            .field("chunk", &self.chunk)
            .finish_non_exhaustive()
    }
}

impl<R: Runtime, F: Read + Send + 'static> BlockingReader<R, F> {
    /// Reads `reader` in chunks of `chunk` bytes on `rt`'s blocking threads.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero chunk size; [`ConfigError::OutOfRange`] for a chunk
    /// over [`MAX_BUFFER`](super::MAX_BUFFER) or one that cannot be allocated.
    pub fn new(rt: R, reader: F, chunk: usize) -> Result<Self, ConfigError> {
        if chunk == 0 {
            return Err(ConfigError::Zero { field: "chunk" });
        }
        // Both buffers now, so a chunk too large to allocate twice is refused here with a
        // typed error instead of aborting the process at the second read.
        let first = super::zeroed_buffer("chunk", chunk)?;
        let mut second = super::zeroed_buffer("chunk", chunk)?;
        second.clear();
        let mut this = Self {
            rt,
            chunk,
            current: second,
            pos: 0,
            state: State::Idle(Some((reader, first))),
        };
        this.start_read();
        Ok(this)
    }

    /// Starts reading the next chunk into the spare buffer.
    fn start_read(&mut self) {
        if let State::Idle(Some((mut reader, mut buf))) =
            std::mem::replace(&mut self.state, State::Done)
        {
            buf.resize(self.chunk, 0);
            self.state = State::Reading(self.rt.spawn_blocking(move || {
                let result = read_once(&mut reader, &mut buf);
                (reader, buf, result)
            }));
        }
    }
}

/// One read (retried on `Interrupted`): a regular file fills the chunk, a pipe returns what
/// it has, so a slow writer is never waited on for a whole chunk.
fn read_once(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

impl<R: Runtime, F: Read + Send + 'static> AsyncRead for BlockingReader<R, F> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.current.len() {
                let n = out.len().min(this.current.len() - this.pos);
                out[..n].copy_from_slice(&this.current[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(n));
            }
            let handle = match &mut this.state {
                State::Reading(handle) => handle,
                // After an error the reader is idle: a retry reads again.
                State::Idle(_) => {
                    this.start_read();
                    continue;
                }
                State::Done => return Poll::Ready(Ok(0)),
                State::Lost(why) => return Poll::Ready(Err(io::Error::other(*why))),
            };
            let (reader, buf, result) = match ready!(Pin::new(handle).poll(cx)) {
                Ok(done) => done,
                Err(failure) => {
                    let why = if matches!(failure, JoinError::Panicked(_)) {
                        "a blocking read panicked"
                    } else {
                        "a blocking read was cancelled"
                    };
                    // The finished handle is not polled again; every later read says why.
                    this.state = State::Lost(why);
                    return Poll::Ready(Err(io::Error::other(why)));
                }
            };
            let read = match result {
                Ok(0) => {
                    this.state = State::Done;
                    return Poll::Ready(Ok(0));
                }
                Ok(read) => read,
                Err(e) => {
                    this.state = State::Idle(Some((reader, buf)));
                    return Poll::Ready(Err(e));
                }
            };
            // The fresh chunk becomes current; the consumed one is the next read's buffer.
            let spare = std::mem::replace(&mut this.current, buf);
            this.current.truncate(read);
            this.pos = 0;
            // Its capacity is a whole chunk: `start_read` sizes it without allocating.
            this.state = State::Idle(Some((reader, spare)));
            this.start_read();
        }
    }
}

// `Future::poll` on the join handle above.
use std::future::Future as _;
