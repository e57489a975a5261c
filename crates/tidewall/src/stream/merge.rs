//! Prioritized merge of two streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use pin_project_lite::pin_project;

use crate::ConfigError;

pin_project! {
    /// Two streams merged with a priority; see
    /// [`StreamOps::prioritized`](super::StreamOps::prioritized).
    ///
    /// **Biased**: whenever the high-priority stream has an item ready it is delivered first,
    /// so a high stream that is always ready starves the low one. Opt in to a bound with
    /// [`low_at_least_every`](Self::low_at_least_every): after `n` high items in a row, a
    /// ready low item goes next. The merge ends when both streams have ended.
    #[must_use = "streams do nothing unless polled"]
    pub struct Prioritized<H, L> {
        #[pin]
        high: H,
        #[pin]
        low: L,
        high_done: bool,
        low_done: bool,
        // After this many high items in a row, the low stream goes first (None: never).
        fairness: Option<u32>,
        high_streak: u32,
    }
}

impl<H, L> Prioritized<H, L> {
    pub(super) fn new(high: H, low: L) -> Self {
        Self {
            high,
            low,
            high_done: false,
            low_done: false,
            fairness: None,
            high_streak: 0,
        }
    }

    /// Guarantees the low stream a turn: after `n` high items in a row, a ready low item is
    /// delivered before the next high one.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for `n == 0`.
    pub fn low_at_least_every(mut self, n: u32) -> Result<Self, ConfigError> {
        if n == 0 {
            return Err(ConfigError::Zero { field: "n" });
        }
        self.fairness = Some(n);
        Ok(self)
    }
}

impl<T, H: Stream<Item = T>, L: Stream<Item = T>> Stream for Prioritized<H, L> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut this = self.project();
        let low_first = this.fairness.is_some_and(|n| *this.high_streak >= n);
        if low_first && !*this.low_done {
            match this.low.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    *this.high_streak = 0;
                    return Poll::Ready(Some(item));
                }
                Poll::Ready(None) => *this.low_done = true,
                Poll::Pending => {}
            }
        }
        if !*this.high_done {
            match this.high.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    *this.high_streak = this.high_streak.saturating_add(1);
                    return Poll::Ready(Some(item));
                }
                Poll::Ready(None) => *this.high_done = true,
                Poll::Pending => {}
            }
        }
        if !*this.low_done && !low_first {
            match this.low.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    *this.high_streak = 0;
                    return Poll::Ready(Some(item));
                }
                Poll::Ready(None) => *this.low_done = true,
                Poll::Pending => {}
            }
        }
        if *this.high_done && *this.low_done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}
