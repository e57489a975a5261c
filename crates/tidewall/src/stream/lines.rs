//! Line streaming from any async reader: batches of borrowed lines from one reused buffer.

use std::io;
use std::pin::Pin;

use futures_util::io::{AsyncRead, AsyncReadExt};

use crate::ConfigError;

/// What to do with a line longer than the configured maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlong {
    /// Fail with [`LinesError::TooLong`] (the default: an unbounded line is usually an attack
    /// or a corrupt file).
    #[default]
    Error,
    /// Skip the line (counted in [`LineReader::skipped`]) and go on; a batch of only skipped
    /// lines is not delivered (reading goes on).
    Skip,
}

/// Why reading lines failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum LinesError {
    /// The reader failed.
    Io(io::Error),
    /// A line was longer than the maximum (with [`Overlong::Error`]).
    TooLong {
        /// The maximum, in bytes (excluding the newline).
        max: usize,
    },
}

impl std::fmt::Display for LinesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "reading lines: {e}"),
            Self::TooLong { max } => write!(f, "a line is longer than the maximum of {max} bytes"),
        }
    }
}

impl std::error::Error for LinesError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::TooLong { .. } => None,
        }
    }
}

impl From<io::Error> for LinesError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Reads lines in batches from any [`AsyncRead`], without allocating per line.
///
/// Each [`next_batch`](Self::next_batch) fills one reused buffer (one large read, typically
/// many lines) and lends out the complete lines in it as a [`LineBatch`] of `&[u8]` slices,
/// found with `memchr`. Bytes are delivered as they are: a UTF-8 view is an explicit, fallible
/// step (`std::str::from_utf8`). A line is the bytes before `\n` (a trailing `\r` is kept);
/// a last line without `\n` is delivered at end of input.
///
/// Memory is the buffer, fixed at construction: at most `max(buffer, max_line + 1)` bytes,
/// whatever the input size. A line longer than `max_line` fails with
/// [`LinesError::TooLong`] or is skipped, by choice ([`Overlong`]) — `AsyncBufRead::lines()`
/// has no limit at all.
///
/// Not a `Stream`: a batch borrows the reader's buffer, which a `Stream` item cannot.
///
/// ```
/// use tidewall::stream::{LineReader, Overlong};
///
/// # futures_util::FutureExt::now_or_never(async {
/// let input: &[u8] = b"200 GET /\n404 GET /x\n500 POST /y";
/// let mut lines = LineReader::new(input, 64 * 1024, 1024, Overlong::Error)?;
/// let mut codes = Vec::new();
/// while let Some(batch) = lines.next_batch().await? {
///     for line in batch.lines() {
///         codes.push(line[..3].to_vec());
///     }
/// }
/// assert_eq!(codes, [b"200".to_vec(), b"404".to_vec(), b"500".to_vec()]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap().unwrap();
/// ```
pub struct LineReader<Rd> {
    reader: Rd,
    buf: Box<[u8]>,
    // buf[start..end] holds bytes not yet delivered; lines end at `start`.
    start: usize,
    end: usize,
    max_line: usize,
    overlong: Overlong,
    skipping: bool,
    skipped: u64,
    eof: bool,
    /// `buf[..searched]` holds no newline (beyond what was delivered).
    searched: usize,
    /// An overlong line was met with [`Overlong::Error`]: the reader stops there.
    failed: bool,
}

impl<Rd> std::fmt::Debug for LineReader<Rd> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineReader")
            .field("buffer", &self.buf.len())
            .field("max_line", &self.max_line)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

/// The complete lines of one read, borrowed from the reader's buffer.
#[derive(Debug, Clone, Copy)]
pub struct LineBatch<'a> {
    bytes: &'a [u8],
}

impl<'a> LineBatch<'a> {
    /// The lines, without their `\n` (found with `memchr`).
    pub fn lines(&self) -> Lines<'a> {
        Lines { rest: self.bytes }
    }

    /// The raw bytes of the batch (whole lines, each ending in `\n` except possibly the last
    /// of the input).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// The lines of a [`LineBatch`].
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let (line, rest) = match memchr::memchr(b'\n', self.rest) {
            Some(at) => (&self.rest[..at], &self.rest[at + 1..]),
            None => (self.rest, &[][..]),
        };
        self.rest = rest;
        Some(line)
    }
}

impl<Rd: AsyncRead + Unpin> LineReader<Rd> {
    /// Reads lines from `reader` with a buffer of `buffer` bytes (raised to `max_line + 1`
    /// if smaller), refusing or skipping lines longer than `max_line` bytes.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero `buffer` or `max_line`; [`ConfigError::OutOfRange`]
    /// when the buffer (`buffer`, or `max_line + 1` if larger) would exceed
    /// [`MAX_BUFFER`](super::MAX_BUFFER) or cannot be allocated.
    pub fn new(
        reader: Rd,
        buffer: usize,
        max_line: usize,
        overlong: Overlong,
    ) -> Result<Self, ConfigError> {
        if buffer == 0 {
            return Err(ConfigError::Zero { field: "buffer" });
        }
        if max_line == 0 {
            return Err(ConfigError::Zero { field: "max_line" });
        }
        let size = if max_line >= buffer {
            let size = max_line.saturating_add(1);
            super::zeroed_buffer("max_line", size)?
        } else {
            super::zeroed_buffer("buffer", buffer)?
        };
        Ok(Self {
            reader,
            buf: size.into_boxed_slice(),
            start: 0,
            end: 0,
            max_line,
            overlong,
            skipping: false,
            skipped: 0,
            eof: false,
            searched: 0,
            failed: false,
        })
    }

    /// Lines skipped for being too long (with [`Overlong::Skip`]).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The next batch of complete lines, or `None` at end of input. A batch is never empty:
    /// with [`Overlong::Skip`], when every line a read brought in is skipped, reading goes on
    /// until a line fits or the input ends.
    ///
    /// **Cancel safety:** dropping the future between reads loses nothing; dropped during a
    /// read, the bytes that read had not returned yet are not lost either (the reader keeps
    /// them), but the partial line already buffered stays buffered for the next call.
    ///
    /// # Errors
    ///
    /// [`LinesError::Io`] from the reader: the partial line stays buffered, and the next call
    /// reads on from there (a reader that fails once loses nothing). [`LinesError::TooLong`]
    /// for an overlong line with [`Overlong::Error`]: the complete lines before it are
    /// delivered first, then this and every later call fails (the reader stops at that line).
    pub async fn next_batch(&mut self) -> Result<Option<LineBatch<'_>>, LinesError> {
        if self.failed {
            return Err(LinesError::TooLong { max: self.max_line });
        }
        loop {
            // Lines of the previous batch are consumed: keep only what follows them.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.searched = self.searched.saturating_sub(self.start);
                self.start = 0;
            }
            // Complete lines already buffered (after a skipped line, or past the end of the
            // last batch) go out before reading more. Bytes known to hold no newline are not
            // searched again, so a long partial line costs one scan, not one per read.
            if !self.skipping {
                if let Some(at) = memchr::memrchr(b'\n', &self.buf[self.searched..self.end]) {
                    let len = self.searched + at + 1;
                    let lent = self.settle(len)?;
                    if lent > 0 {
                        return Ok(Some(self.lend(lent)));
                    }
                    // Every line of it was skipped: a batch is never empty, read on.
                    continue;
                }
                self.searched = self.end;
            }
            if self.end == self.buf.len() {
                // A full buffer without a newline: one line longer than any allowed.
                self.overlong_line()?;
                self.end = 0;
                self.searched = 0;
                continue;
            }
            let read = if self.eof {
                0
            } else {
                Pin::new(&mut self.reader)
                    .read(&mut self.buf[self.end..])
                    .await?
            };
            let fresh = self.end;
            self.end += read;
            if read == 0 {
                self.eof = true;
                if self.skipping {
                    // The overlong line was the last, without a newline.
                    self.skipping = false;
                    self.skipped += 1;
                    self.end = 0;
                    return Ok(None);
                }
                if self.end == 0 {
                    return Ok(None);
                }
                // The last line has no newline.
                let len = self.end;
                let lent = self.settle(len)?;
                if lent > 0 {
                    return Ok(Some(self.lend(lent)));
                }
                // It was skipped; the next turn finds the buffer empty and ends.
                continue;
            }
            if self.skipping {
                // Drop bytes up to the end of the overlong line; what follows is searched at
                // the top of the loop.
                match memchr::memchr(b'\n', &self.buf[fresh..self.end]) {
                    Some(at) => {
                        self.skipping = false;
                        self.skipped += 1;
                        self.start = fresh + at + 1;
                        self.searched = self.start;
                    }
                    None => {
                        self.end = 0;
                        self.searched = 0;
                    }
                }
            }
        }
    }

    /// Checks every line's length in `buf[..len]` (whole lines) and returns how many bytes at
    /// the front of the buffer go out as a batch: 0 when [`Overlong::Skip`] dropped every
    /// line. With [`Overlong::Error`], the lines before an overlong one still go out; the
    /// overlong line then fails this call or the next, and every call after it.
    fn settle(&mut self, len: usize) -> Result<usize, LinesError> {
        let first_overlong = {
            let mut offset = 0;
            let mut found = None;
            for line in (LineBatch {
                bytes: &self.buf[..len],
            })
            .lines()
            {
                if line.len() > self.max_line {
                    found = Some(offset);
                    break;
                }
                offset += line.len() + 1;
            }
            found
        };
        let Some(at) = first_overlong else {
            self.start = len;
            // What follows the batch's last newline holds none.
            self.searched = self.end;
            return Ok(len);
        };
        match self.overlong {
            Overlong::Error if at > 0 => {
                // Deliver the good lines before it; the next call meets it first.
                self.start = at;
                self.searched = at;
                Ok(at)
            }
            Overlong::Error => {
                self.failed = true;
                Err(LinesError::TooLong { max: self.max_line })
            }
            Overlong::Skip => {
                // Rare: keep the lines that fit, compacted in place.
                self.start = len;
                self.searched = self.end;
                Ok(compact_fitting(
                    &mut self.buf[..len],
                    self.max_line,
                    &mut self.skipped,
                ))
            }
        }
    }

    fn lend(&self, len: usize) -> LineBatch<'_> {
        LineBatch {
            bytes: &self.buf[..len],
        }
    }

    fn overlong_line(&mut self) -> Result<(), LinesError> {
        match self.overlong {
            Overlong::Error => {
                self.failed = true;
                Err(LinesError::TooLong { max: self.max_line })
            }
            Overlong::Skip => {
                self.skipping = true;
                Ok(())
            }
        }
    }
}

/// Moves the lines of `batch` that fit within `max` to its front; returns the new length.
fn compact_fitting(batch: &mut [u8], max: usize, skipped: &mut u64) -> usize {
    let (mut read, mut write) = (0, 0);
    while read < batch.len() {
        let end = memchr::memchr(b'\n', &batch[read..]).map_or(batch.len(), |at| read + at + 1);
        let line_len = end - read - usize::from(batch[end - 1] == b'\n');
        if line_len > max {
            *skipped += 1;
        } else {
            batch.copy_within(read..end, write);
            write += end - read;
        }
        read = end;
    }
    write
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    /// Every batch `next_batch` returns, as lines, until the end or an error.
    fn batches(input: &[u8], buffer: usize, max_line: usize) -> (Vec<Vec<Vec<u8>>>, u64) {
        let mut reader = LineReader::new(input, buffer, max_line, Overlong::Skip).unwrap();
        let mut out = Vec::new();
        while let Some(batch) = reader.next_batch().now_or_never().unwrap().unwrap() {
            out.push(batch.lines().map(<[u8]>::to_vec).collect());
        }
        (out, reader.skipped())
    }

    /// A read that brings in only overlong lines used to come back as a batch of zero lines.
    #[test]
    fn a_read_of_only_skipped_lines_yields_no_batch() {
        // One 16-byte read holds two overlong lines and the start of a fitting one.
        let (got, skipped) = batches(b"aaaaaa\nbbbbbb\nok\n", 16, 4);
        assert_eq!(got, [vec![b"ok".to_vec()]]);
        assert_eq!(skipped, 2);
    }

    #[test]
    fn an_overlong_last_line_without_newline_yields_no_batch() {
        let (got, skipped) = batches(b"ok\naaaaaa", 64, 4);
        assert_eq!(got, [vec![b"ok".to_vec()]]);
        assert_eq!(skipped, 1);
        let (got, skipped) = batches(b"aaaaaa", 64, 4);
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(skipped, 1);
    }
}
