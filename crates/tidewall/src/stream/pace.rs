//! Pacing operators: `throttle` (fixed spacing), `rate_limit` (GCRA with bursts) and
//! `timeout_each` (a bound on the gap between items).

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use futures_core::Stream;
use pin_project_lite::pin_project;

use crate::rate::RateLimiter;
use crate::rt::{Clock, instant_after};
use crate::time::{Elapsed, positive_duration};
use crate::{ConfigError, Rejected};

pin_project! {
    /// Items at least `period` apart; see [`StreamOps::throttle`](super::StreamOps::throttle).
    ///
    /// No burst: after an item, the next is delivered no earlier than `period` later. The
    /// source is not polled while the throttle waits, so it is paused, not buffered.
    #[must_use = "streams do nothing unless polled"]
    pub struct Throttle<S, R: Clock> {
        #[pin]
        source: S,
        rt: R,
        period: Duration,
        #[pin]
        gap: Option<R::Sleep>,
    }
}

impl<S, R: Clock> Throttle<S, R> {
    pub(super) fn new(source: S, rt: R, period: Duration) -> Result<Self, ConfigError> {
        positive_duration("period", period)?;
        Ok(Self {
            source,
            rt,
            period,
            gap: None,
        })
    }
}

impl<S: Stream, R: Clock> Stream for Throttle<S, R> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let mut this = self.project();
        if let Some(gap) = this.gap.as_mut().as_pin_mut() {
            ready!(gap.poll(cx));
            this.gap.set(None);
        }
        let item = ready!(this.source.poll_next(cx));
        if item.is_some() {
            this.gap.set(Some(this.rt.sleep(*this.period)));
        }
        Poll::Ready(item)
    }
}

pin_project! {
    /// Items admitted by a shared GCRA [`RateLimiter`]; see
    /// [`StreamOps::rate_limit`](super::StreamOps::rate_limit).
    ///
    /// Bursts pass at once up to the limiter's burst, then one item per emission interval.
    /// The limiter may be shared with other streams or callers: they draw from one budget.
    #[must_use = "streams do nothing unless polled"]
    pub struct RateLimit<S: Stream, R: Clock> {
        #[pin]
        source: S,
        limiter: RateLimiter<R>,
        held: Option<S::Item>,
        #[pin]
        wait: Option<R::Sleep>,
    }
}

impl<S: Stream, R: Clock> RateLimit<S, R> {
    pub(super) fn new(source: S, limiter: RateLimiter<R>) -> Self {
        Self {
            source,
            limiter,
            held: None,
            wait: None,
        }
    }
}

impl<S: Stream, R: Clock> Stream for RateLimit<S, R> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let mut this = self.project();
        loop {
            if let Some(wait) = this.wait.as_mut().as_pin_mut() {
                ready!(wait.poll(cx));
                this.wait.set(None);
            }
            if this.held.is_none() {
                match ready!(this.source.as_mut().poll_next(cx)) {
                    Some(item) => *this.held = Some(item),
                    None => return Poll::Ready(None),
                }
            }
            // The quiet decision: waiting here is pacing, not a rejection to count.
            match this.limiter.decide(1) {
                // One cell never exceeds a burst (at least 1), so the only refusal is "wait".
                Err(Rejected::RateLimited { retry_after }) => {
                    this.wait
                        .set(Some(this.limiter.runtime().sleep(retry_after)));
                }
                _ => return Poll::Ready(this.held.take()),
            }
        }
    }
}

pin_project! {
    /// Each item within `timeout` of being asked for; see
    /// [`StreamOps::timeout_each`](super::StreamOps::timeout_each).
    ///
    /// The timer measures the upstream, not the consumer: it starts when the consumer asks
    /// for the next item (the first `poll_next` after the previous item was delivered, or the
    /// very first) and finds it not ready. The time the consumer spends with an item before
    /// asking for the next is not counted, so a slow consumer never causes `Elapsed` (unlike
    /// `tokio-stream`'s `timeout`, whose timer runs from the delivery of the previous item).
    ///
    /// If the item has not come `timeout` after it was asked for, the stream yields one
    /// `Err(Elapsed)` and goes on waiting for it without a timer: when it comes it is `Ok`,
    /// and the timer of the item after it starts when that one is asked for. The upstream is
    /// polled before the timer, so an item that is ready when the timer fires is delivered.
    ///
    /// **Cancel safety:** dropping a `next()` future loses nothing; the timer of the item
    /// being waited for keeps running for the next poll.
    ///
    /// ```
    /// use std::time::Duration;
    /// use futures_util::{StreamExt, stream};
    /// use tidewall::stream::StreamOps;
    /// use tidewall::time::Elapsed;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// // The upstream takes 40 ms, then 80 ms, from being asked for each item.
    /// let upstream = stream::iter([40, 80]).then(|ms| async move {
    ///     tokio::time::sleep(Duration::from_millis(ms)).await;
    ///     ms
    /// });
    /// let mut items = std::pin::pin!(upstream.timeout_each(Duration::from_millis(50))?);
    /// assert_eq!(items.next().await, Some(Ok(40)));
    /// // A consumer busy for a second is not the upstream's fault.
    /// tokio::time::sleep(Duration::from_secs(1)).await;
    /// assert_eq!(items.next().await, Some(Err(Elapsed))); // 50 ms into the 80
    /// assert_eq!(items.next().await, Some(Ok(80)));
    /// assert_eq!(items.next().await, None);
    /// # Ok(()) }
    /// ```
    #[must_use = "streams do nothing unless polled"]
    pub struct TimeoutEach<S, R: Clock> {
        #[pin]
        source: S,
        rt: R,
        timeout: Duration,
        #[pin]
        timer: Option<R::Sleep>,
        // This gap already yielded its `Elapsed`: wait quietly for the next item.
        expired: bool,
    }
}

impl<S, R: Clock> TimeoutEach<S, R> {
    pub(super) fn new(source: S, rt: R, timeout: Duration) -> Result<Self, ConfigError> {
        positive_duration("timeout", timeout)?;
        Ok(Self {
            source,
            rt,
            timeout,
            timer: None,
            expired: false,
        })
    }
}

impl<S: Stream, R: Clock> Stream for TimeoutEach<S, R> {
    type Item = Result<S::Item, Elapsed>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if let Poll::Ready(item) = this.source.as_mut().poll_next(cx) {
            this.timer.set(None);
            *this.expired = false;
            return Poll::Ready(item.map(Ok));
        }
        if *this.expired {
            return Poll::Pending;
        }
        if this.timer.is_none() {
            let at: Instant = instant_after(this.rt.now(), *this.timeout);
            this.timer.set(Some(this.rt.sleep_until(at)));
        }
        if let Some(timer) = this.timer.as_mut().as_pin_mut() {
            ready!(timer.poll(cx));
        }
        this.timer.set(None);
        *this.expired = true;
        Poll::Ready(Some(Err(Elapsed)))
    }
}
