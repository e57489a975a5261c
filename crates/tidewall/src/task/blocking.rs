//! Blocking work off the async threads, with a cooperative cancel flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::rt::{JoinHandle, Runtime};

/// A flag blocking work polls to learn that nobody wants its result any more.
///
/// Blocking code cannot be interrupted from outside; it has to look. Check
/// [`is_cancelled`](Self::is_cancelled) between units of work (a chunk, a row, an iteration)
/// and return early.
#[derive(Debug, Clone)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// Whether the work should stop.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The handle of [`spawn_blocking_cancellable`]: await the result, or cancel the work.
///
/// Dropping the handle (e.g. because the awaiting future was itself cancelled or timed out)
/// raises the flag too, so abandoned work stops at its next check instead of burning a
/// blocking thread to completion.
#[derive(Debug)]
pub struct BlockingTask<H> {
    handle: H,
    flag: Arc<AtomicBool>,
}

impl<H> BlockingTask<H> {
    /// Asks the work to stop (it sees the flag at its next check).
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::Relaxed);
    }
}

impl<H> Drop for BlockingTask<H> {
    fn drop(&mut self) {
        self.flag.store(true, Ordering::Relaxed);
    }
}

impl<H: std::future::Future + Unpin> std::future::Future for BlockingTask<H> {
    type Output = H::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<H::Output> {
        std::pin::Pin::new(&mut self.handle).poll(cx)
    }
}

/// Runs `work` on `rt`'s blocking threads with a [`CancelFlag`] it should check.
///
/// **Cancel safety:** dropping the returned task (or the future awaiting it) raises the flag;
/// the work stops at its next check, and its result is discarded.
///
/// ```
/// use tidewall::rt::Tokio;
/// use tidewall::task::spawn_blocking_cancellable;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let task = spawn_blocking_cancellable(&Tokio, |flag| {
///     let mut sum = 0u64;
///     for i in 0..1_000_000u64 {
///         if i % 10_000 == 0 && flag.is_cancelled() {
///             return None; // nobody is waiting any more
///         }
///         sum += i;
///     }
///     Some(sum)
/// });
/// assert_eq!(task.await.unwrap(), Some(499_999_500_000));
/// # }
/// ```
pub fn spawn_blocking_cancellable<R, W, T>(rt: &R, work: W) -> BlockingTask<JoinHandle<R, T>>
where
    R: Runtime,
    W: FnOnce(CancelFlag) -> T + Send + 'static,
    T: Send + 'static,
{
    let flag = Arc::new(AtomicBool::new(false));
    let handle = rt.spawn_blocking({
        let flag = CancelFlag(Arc::clone(&flag));
        move || work(flag)
    });
    BlockingTask { handle, flag }
}
