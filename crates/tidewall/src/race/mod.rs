//! Racing: the first success wins, the rest are cancelled.
//!
//! [`race_ok`] polls every future in the calling task. The first `Ok` is returned and every
//! other future is dropped at once (cancelled at its current await point). If all fail, every
//! error comes back, in input order, so nothing is hidden.
//!
//! Use it to query replicas or mirrors and take the fastest good answer. For a *delayed* second
//! request (hedging), start the second future after a sleep inside it.
//!
//! **Cancel safety**: dropping the race drops every contestant; nothing else is held.
//! **Fairness**: contestants are polled when woken, not in a fixed order; when several are
//! ready in the same poll, the first one polled wins.
//!
//! ```
//! use std::time::Duration;
//! use tidewall::race::{race_ok, RaceError};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let replica = |delay_ms: u64, ok: bool| async move {
//!     tokio::time::sleep(Duration::from_millis(delay_ms)).await;
//!     if ok { Ok(delay_ms) } else { Err(format!("replica {delay_ms} failed")) }
//! };
//! // The fast replica fails; the next fastest good one wins and the slow one is dropped.
//! let winner = race_ok([replica(10, false), replica(50, true), replica(900, true)]).await;
//! assert_eq!(winner, Ok(50));
//!
//! let all_bad = race_ok([replica(1, false), replica(2, false)]).await;
//! assert!(matches!(all_bad, Err(RaceError::AllFailed(errors)) if errors.len() == 2));
//! # });
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::stream::FuturesUnordered;

/// Why no contestant succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RaceError<E> {
    /// Every contestant failed; their errors, in input order.
    AllFailed(Vec<E>),
    /// There were no contestants.
    Empty,
}

impl<E: fmt::Display> fmt::Display for RaceError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AllFailed(errors) => {
                write!(f, "all {} contestants failed", errors.len())?;
                if let Some(first) = errors.first() {
                    write!(f, "; first error: {first}")?;
                }
                Ok(())
            }
            Self::Empty => f.write_str("race with no contestants"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for RaceError<E> {}

/// Runs every future concurrently; returns the first `Ok`, or all errors. See the
/// [module docs](self).
pub fn race_ok<I, F, T, E>(futures: I) -> RaceOk<F, E>
where
    I: IntoIterator<Item = F>,
    F: Future<Output = Result<T, E>>,
{
    let running: FuturesUnordered<Indexed<F>> = futures
        .into_iter()
        .enumerate()
        .map(|(index, future)| Indexed { index, future })
        .collect();
    let errors = std::iter::repeat_with(|| None)
        .take(running.len())
        .collect();
    RaceOk { running, errors }
}

/// The future returned by [`race_ok`].
#[must_use = "futures do nothing unless polled"]
pub struct RaceOk<F, E> {
    running: FuturesUnordered<Indexed<F>>,
    errors: Vec<Option<E>>,
}

impl<F, E> fmt::Debug for RaceOk<F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaceOk")
            .field("running", &self.running.len())
            .finish_non_exhaustive()
    }
}

// The contestants are pinned inside `FuturesUnordered`'s own allocations and the errors are
// never pinned, so moving a `RaceOk` is fine whatever `F` and `E` are.
impl<F, E> Unpin for RaceOk<F, E> {}

impl<F, T, E> Future for RaceOk<F, E>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, RaceError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.errors.is_empty() {
            return Poll::Ready(Err(RaceError::Empty));
        }
        loop {
            match Pin::new(&mut self.running).poll_next(cx) {
                Poll::Ready(Some((_, Ok(value)))) => {
                    // Cancel the losers now, not whenever the race itself is dropped.
                    self.running.clear();
                    return Poll::Ready(Ok(value));
                }
                Poll::Ready(Some((index, Err(error)))) => self.errors[index] = Some(error),
                Poll::Ready(None) => {
                    let errors = std::mem::take(&mut self.errors)
                        .into_iter()
                        .flatten()
                        .collect();
                    return Poll::Ready(Err(RaceError::AllFailed(errors)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

pin_project_lite::pin_project! {
    struct Indexed<F> {
        index: usize,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Indexed<F> {
    type Output = (usize, F::Output);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.future.poll(cx).map(|output| (*this.index, output))
    }
}
