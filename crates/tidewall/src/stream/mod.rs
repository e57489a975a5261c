//! Stream processing: operators with real backpressure, sources, and constant-memory lines.
//!
//! * Operators on any `futures_core::Stream` through [`StreamOps`]: [`batch`](StreamOps::batch)
//!   by count, [`batch_weighted`](StreamOps::batch_weighted) by bytes or cost (both also by
//!   time since a batch's first item), [`throttle`](StreamOps::throttle) (fixed spacing),
//!   [`rate_limit`](StreamOps::rate_limit) (GCRA, bursts), [`par_map`](StreamOps::par_map) /
//!   [`par_map_unordered`](StreamOps::par_map_unordered) (spawned, bounded, progressing while
//!   the consumer is busy) and [`par_map_local`](StreamOps::par_map_local) for `!Send` work,
//!   [`timeout_each`](StreamOps::timeout_each), and [`prioritized`](StreamOps::prioritized)
//!   merging.
//! * [`KeyedMerge`]: many keyed streams, polling only the ones that woke, with a notice when
//!   one ends.
//! * Sources: [`LineReader`] (batches of borrowed lines from one reused buffer, bounded line
//!   length), [`interval_on`] (missed-tick behaviour, jitter), [`generator`] (an async
//!   closure feeding a bounded buffer).
//!
//! **Backpressure** is structural: every operator holds a bounded amount (one batch, one
//! item, `limit` in-flight items) and stops pulling its source until its consumer takes what
//! it holds. **Bad input** — a zero limit, size, weight or period — is a [`ConfigError`],
//! never a stream that hangs.
//!
//! **Cancel safety**: every stream here keeps its state in itself, not in a `next()` future:
//! dropping a `next()` (as `select!` does with the branch that lost) loses no item, batch,
//! pacing or in-flight work; the next poll goes on where it stopped.
//!
//! ```
//! use std::time::Duration;
//! use futures_util::{StreamExt, stream};
//! use tidewall::stream::StreamOps;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tidewall::ConfigError> {
//! let batches: Vec<Vec<u32>> = stream::iter(1..=7).batch(3, Duration::from_millis(10))?.collect().await;
//! assert_eq!(batches, [vec![1, 2, 3], vec![4, 5, 6], vec![7]]);
//!
//! let doubled: Vec<u32> = stream::iter(1..=5)
//!     .par_map(2, |n| async move { n * 2 })?
//!     .map(|r| r.expect("no panic"))
//!     .collect()
//!     .await;
//! assert_eq!(doubled, [2, 4, 6, 8, 10]);
//! # Ok(()) }
//! ```

mod batch;
mod file;
mod follow;
mod generator;
mod interval;
mod keyed;
mod lines;
mod merge;
mod ops;
mod pace;
mod par_map;
#[cfg(feature = "watch")]
mod watch;

use std::future::Future;
use std::time::Duration;

pub use batch::{Batch, EachCountsOne, Weigh};
pub use file::BlockingReader;
pub use follow::Follow;
pub use generator::{Generator, Yielder};
pub use interval::{Interval, MissedTicks};
pub use keyed::{Keyed, KeyedMerge};
pub use lines::{LineBatch, LineReader, Lines, LinesError, Overlong};
pub use merge::Prioritized;
pub use ops::StreamOps;
pub use pace::{RateLimit, Throttle, TimeoutEach};
pub use par_map::{ParMap, ParMapLocal};
#[cfg(feature = "watch")]
pub use watch::{DirChanges, DirWatch, WatchError};

/// The largest read buffer or chunk a reader accepts (1 GiB): a size past it is refused with
/// a typed error instead of aborting the process when the allocation fails. A line reader
/// keeps its line and one byte more within it, so its `max_line` is at most `MAX_BUFFER - 1`.
pub const MAX_BUFFER: usize = 1 << 30;

/// A zeroed buffer of `len` bytes for a reader's `field`, or the error that says why not.
fn zeroed_buffer(field: &'static str, len: usize) -> Result<Vec<u8>, ConfigError> {
    let refused = |allowed| ConfigError::OutOfRange {
        field,
        // Sizes are reported as f64, exact up to 2^53 bytes.
        #[allow(clippy::cast_precision_loss)]
        value: len as f64,
        allowed,
    };
    if len > MAX_BUFFER {
        return Err(refused("at most 1 GiB (stream::MAX_BUFFER)"));
    }
    let mut buffer = Vec::new();
    buffer
        .try_reserve_exact(len)
        .map_err(|_| refused("a size this process can allocate"))?;
    buffer.resize(len, 0);
    Ok(buffer)
}

use crate::ConfigError;
use crate::rt::{Clock, Runtime};

/// Ticks every `period` on `rt`, with the given missed-tick behaviour. See [`Interval`].
///
/// # Errors
///
/// [`ConfigError::Zero`] for a zero period; [`ConfigError::DurationOverflow`] for one
/// beyond `u64` nanoseconds (about 584 years).
pub fn interval_on<R: Clock>(
    rt: &R,
    period: Duration,
    missed: MissedTicks,
) -> Result<Interval<R>, ConfigError> {
    Interval::new(rt.clone(), period, missed)
}

/// Follows the file at `path` (`tail -F`): the lines appended since the last look, looking
/// every `period` while the stream is polled (it looks at the file only then: rotation and
/// truncation between polls are noticed at the next look, within the limits [`Follow`]
/// states); starting at its end as this returns (it opens the file, on the calling thread),
/// or at its start with `from_start`. Lines longer than `max_line` arrive as errors. Needs
/// no runtime until polled.
///
/// # Errors
///
/// [`ConfigError::Zero`] for a zero period or `max_line`; [`ConfigError::OutOfRange`] for a
/// `max_line` past [`MAX_BUFFER`]; [`ConfigError::DurationOverflow`] for a period beyond
/// `u64` nanoseconds (about 584 years).
pub fn follow_on<R: Runtime>(
    rt: &R,
    path: impl AsRef<std::path::Path>,
    period: Duration,
    max_line: usize,
    from_start: bool,
) -> Result<Follow<R>, ConfigError> {
    Follow::new(rt.clone(), path.as_ref(), period, max_line, from_start)
}

/// Watches `dir` (recursively) for changes, debounced by `debounce`. See [`DirWatch`].
///
/// # Errors
///
/// [`WatchError::Config`] for a zero debounce or one beyond `u64` nanoseconds (about 584
/// years), [`WatchError::Notify`] when the OS watcher
/// cannot be set up (e.g. the directory does not exist).
#[cfg(feature = "watch")]
pub fn watch_dir_on<R: Runtime>(
    rt: &R,
    dir: impl AsRef<std::path::Path>,
    debounce: Duration,
) -> Result<DirWatch<R>, WatchError> {
    DirWatch::new(rt.clone(), dir.as_ref(), debounce)
}

/// A stream fed by `produce`, which hands items over with [`Yielder::yield_`]; at most
/// `capacity` items wait between producer and consumer. See [`Generator`].
///
/// ```
/// use futures_util::StreamExt;
///
/// # futures_util::FutureExt::now_or_never(async {
/// let squares = tidewall::stream::generator(4, |mut out| async move {
///     for n in 1..=3u32 {
///         if !out.yield_(n * n).await {
///             return; // the consumer is gone
///         }
///     }
/// })?;
/// assert_eq!(squares.collect::<Vec<_>>().await, [1, 4, 9]);
/// # Ok::<(), tidewall::ConfigError>(())
/// # }).unwrap().unwrap();
/// ```
///
/// # Errors
///
/// [`ConfigError::Zero`] for a zero capacity; [`ConfigError::OutOfRange`] for one over 2^30.
pub fn generator<T, F, Fut>(capacity: usize, produce: F) -> Result<Generator<T, Fut>, ConfigError>
where
    F: FnOnce(Yielder<T>) -> Fut,
    Fut: Future<Output = ()>,
{
    generator::new(capacity, produce)
}
