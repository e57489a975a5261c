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
//! **Panics**: a contestant that panics in `poll` panics the race (then dropped by the caller,
//! with every other contestant). One that panics when dropped does not stop the others from
//! being dropped: the first such panic comes out of the race's poll, or its drop, once every
//! contestant due to be dropped then is gone.
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
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::stream::FuturesUnordered;

use crate::rt::caught::Payload;

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
    let panicked = DropPanic::default();
    let running: FuturesUnordered<Contestant<F>> = futures
        .into_iter()
        .enumerate()
        .map(|(index, future)| Contestant {
            index,
            panicked: Arc::clone(&panicked),
            future: Some(future),
        })
        .collect();
    let errors = std::iter::repeat_with(|| None)
        .take(running.len())
        .collect();
    RaceOk {
        running,
        errors,
        panicked,
    }
}

/// The first panic of a contestant's drop, kept until every contestant dropped with it is
/// gone.
type DropPanic = Arc<Mutex<Option<Payload>>>;

/// The future returned by [`race_ok`].
#[must_use = "futures do nothing unless polled"]
pub struct RaceOk<F, E> {
    running: FuturesUnordered<Contestant<F>>,
    errors: Vec<Option<E>>,
    panicked: DropPanic,
}

impl<F, E> RaceOk<F, E> {
    /// Raises the first panic a contestant's drop caught, if any.
    fn raise_drop_panic(&self) {
        let panic = self
            .panicked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(panic) = panic {
            resume_unwind(panic);
        }
    }
}

impl<F, E> Drop for RaceOk<F, E> {
    fn drop(&mut self) {
        self.running.clear();
        // Raised only outside an unwinding: a second panic would abort the process.
        if !std::thread::panicking() {
            self.raise_drop_panic();
        }
    }
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
            let next = Pin::new(&mut self.running).poll_next(cx);
            if let Poll::Ready(Some((_, Ok(_)))) = next {
                // Cancel the losers now, not whenever the race itself is dropped: before any
                // drop panic comes out (the winner's own included), so none outlives it.
                self.running.clear();
            }
            // A finished contestant is dropped by the set as it yields.
            self.raise_drop_panic();
            match next {
                Poll::Ready(Some((_, Ok(value)))) => return Poll::Ready(Ok(value)),
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
    /// A contestant and its place in the input. Its drop never unwinds into the set that holds
    /// the others (which would stop dropping them there and leak the rest): a panic of the
    /// future's drop is kept in `panicked` for the race to raise.
    struct Contestant<F> {
        index: usize,
        panicked: DropPanic,
        // `None` only once dropped.
        #[pin]
        future: Option<F>,
    }

    impl<F> PinnedDrop for Contestant<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let mut future = this.future;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(move || future.set(None))) {
                this.panicked
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert(panic);
            }
        }
    }
}

impl<F: Future> Future for Contestant<F> {
    type Output = (usize, F::Output);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.future.as_pin_mut() {
            Some(future) => future.poll(cx).map(|output| (*this.index, output)),
            None => Poll::Pending,
        }
    }
}
