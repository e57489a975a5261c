//! `batch` and `batch_weighted`: group items by count or weight, or by time since the first.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_core::Stream;
use pin_project_lite::pin_project;

use crate::ConfigError;
use crate::rt::{Clock, instant_after};

/// How much of a batch's budget an item uses.
pub trait Weigh<T> {
    /// The item's weight (bytes, cost units…); 0 counts as 1.
    fn weigh(&mut self, item: &T) -> u64;
}

/// Source items taken per `poll_next` before yielding to the executor (a huge batch over an
/// always-ready source must not monopolize its task).
const POLL_BUDGET: usize = 4096;

/// While the source stays ready, the clock is read every this many items to end a batch whose
/// `max_wait` has passed: its timer fires only once the task yields, and a source that is
/// always ready would otherwise hold a batch open (and growing) for as long as it lasts.
const CLOCK_EVERY: usize = 16;

/// The most a new batch's buffer reserves up front: a batch that grew past it once does not
/// make every later one as large.
const INITIAL_CAPACITY: u64 = 1024;

/// Every item weighs 1: a batch of at most `max_items`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EachCountsOne;

impl<T> Weigh<T> for EachCountsOne {
    fn weigh(&mut self, _: &T) -> u64 {
        1
    }
}

impl<T, F: FnMut(&T) -> u64> Weigh<T> for F {
    fn weigh(&mut self, item: &T) -> u64 {
        self(item)
    }
}

pin_project! {
    /// Batches of a stream; see [`StreamOps::batch`](super::StreamOps::batch) and
    /// [`StreamOps::batch_weighted`](super::StreamOps::batch_weighted).
    ///
    /// A batch is emitted when it is full (the next item would not fit), when `max_wait` has
    /// passed since its *first* item arrived (noticed within 16 items while the source stays
    /// ready, so a time-only batch over a busy source still ends), or when the stream ends
    /// (with what it holds).
    /// An item heavier than `max_weight` on its own is emitted alone, in a batch of one. Empty
    /// batches are never emitted.
    ///
    /// **Backpressure**: at most one batch (plus one carried-over item) is held; the source is
    /// not polled while a finished batch waits for the consumer.
    #[must_use = "streams do nothing unless polled"]
    pub struct Batch<S: Stream, W, R: Clock> {
        #[pin]
        source: S,
        weigh: W,
        rt: R,
        max_weight: u64,
        max_wait: Duration,
        buffer: Vec<S::Item>,
        weight: u64,
        // An item that did not fit in the batch just emitted: the first of the next one.
        carried: Option<(S::Item, u64, Instant)>,
        // When the batch being filled is due, `max_wait` after its first item.
        due: Instant,
        #[pin]
        timer: Option<R::Sleep>,
        done: bool,
    }
}

impl<S: Stream, W, R: Clock> Batch<S, W, R> {
    pub(super) fn new(
        source: S,
        rt: R,
        weigh: W,
        max_weight: u64,
        max_wait: Duration,
    ) -> Result<Self, ConfigError> {
        if max_weight == 0 {
            return Err(ConfigError::Zero {
                field: "max_weight",
            });
        }
        crate::time::positive_duration("max_wait", max_wait)?;
        // Count batches know their size; weighted ones start small and grow.
        let capacity = initial_capacity(max_weight);
        let due = rt.now();
        Ok(Self {
            source,
            weigh,
            rt,
            max_weight,
            max_wait,
            buffer: Vec::with_capacity(capacity),
            weight: 0,
            carried: None,
            due,
            timer: None,
            done: false,
        })
    }
}

impl<S: Stream, W: Weigh<S::Item>, R: Clock> Stream for Batch<S, W, R> {
    type Item = Vec<S::Item>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if let Some((item, weight, arrived)) = this.carried.take() {
            if weight >= *this.max_weight {
                // Too heavy to share a batch (or exactly full on its own).
                return Poll::Ready(Some(vec![item]));
            }
            this.buffer.push(item);
            *this.weight = weight;
            // Its max_wait counts from when it arrived, not from this poll.
            *this.due = instant_after(arrived, *this.max_wait);
            this.timer.set(Some(this.rt.sleep_until(*this.due)));
        }
        let mut budget = POLL_BUDGET;
        while !*this.done {
            if budget.is_multiple_of(CLOCK_EVERY)
                && !this.buffer.is_empty()
                && this.rt.now() >= *this.due
            {
                let max_weight = *this.max_weight;
                return Poll::Ready(Some(take_batch(
                    this.buffer,
                    this.weight,
                    this.timer,
                    max_weight,
                )));
            }
            if budget == 0 {
                // An always-ready source and a batch that is not full yet: let the executor
                // run other tasks, and come back.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            budget -= 1;
            match this.source.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    // A weight of 0 counts as 1, so every batch is bounded in items too.
                    let weight = this.weigh.weigh(&item).max(1);
                    if this.buffer.is_empty() {
                        if weight >= *this.max_weight {
                            return Poll::Ready(Some(vec![item]));
                        }
                        *this.due = instant_after(this.rt.now(), *this.max_wait);
                        this.timer.set(Some(this.rt.sleep_until(*this.due)));
                    } else if this
                        .weight
                        .checked_add(weight)
                        .is_none_or(|total| total > *this.max_weight)
                    {
                        *this.carried = Some((item, weight, this.rt.now()));
                        return Poll::Ready(Some(take_batch(
                            this.buffer,
                            this.weight,
                            this.timer,
                            *this.max_weight,
                        )));
                    }
                    this.buffer.push(item);
                    *this.weight += weight;
                    if *this.weight >= *this.max_weight {
                        return Poll::Ready(Some(take_batch(
                            this.buffer,
                            this.weight,
                            this.timer,
                            *this.max_weight,
                        )));
                    }
                }
                Poll::Ready(None) => *this.done = true,
                Poll::Pending => {
                    let Some(timer) = this.timer.as_mut().as_pin_mut() else {
                        return Poll::Pending;
                    };
                    ready!(timer.poll(cx));
                    return Poll::Ready(Some(take_batch(
                        this.buffer,
                        this.weight,
                        this.timer,
                        *this.max_weight,
                    )));
                }
            }
        }
        if this.buffer.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Ready(Some(take_batch(
                this.buffer,
                this.weight,
                this.timer,
                *this.max_weight,
            )))
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (_, upper) = self.source.size_hint();
        let held = self.buffer.len() + usize::from(self.carried.is_some());
        (usize::from(held > 0), upper.map(|u| u.saturating_add(held)))
    }
}

/// Hands the buffered batch over; the next one starts with the initial reservation, not the
/// capacity this one grew to.
fn take_batch<T, S>(
    buffer: &mut Vec<T>,
    weight: &mut u64,
    mut timer: Pin<&mut Option<S>>,
    max_weight: u64,
) -> Vec<T> {
    *weight = 0;
    timer.set(None);
    std::mem::replace(buffer, Vec::with_capacity(initial_capacity(max_weight)))
}

/// What a batch reserves up front: its whole size when that is small, else a start to grow from.
fn initial_capacity(max_weight: u64) -> usize {
    usize::try_from(max_weight.min(INITIAL_CAPACITY)).unwrap_or(1024)
}
