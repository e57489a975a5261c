//! The `StreamOps` extension trait: every operator, on any `futures_core::Stream`.

use std::future::Future;
use std::time::Duration;

use futures_core::Stream;

use super::batch::{Batch, EachCountsOne};
use super::merge::Prioritized;
use super::pace::{RateLimit, Throttle, TimeoutEach};
use super::par_map::{ParMap, ParMapLocal};
use crate::ConfigError;
use crate::fan_out::FanOut;
use crate::rate::RateLimiter;
use crate::rt::{Clock, Runtime};

/// Operators for any [`Stream`]: `use tidewall::stream::StreamOps as _;`.
///
/// Every time-based operator has an `_on(rt, ..)` form for any [runtime](crate::rt) and, with
/// the `tokio` feature, a short form on tokio. Operators that take a limit or a period
/// validate it and return [`ConfigError`] for zero (never a stream that hangs forever, as
/// futures' `buffered(0)` does).
pub trait StreamOps: Stream + Sized {
    /// Groups items into batches of at most `max_items`, emitting a batch early once
    /// `max_wait` has passed since its first item. See [`Batch`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero `max_items` or `max_wait`;
    /// [`ConfigError::DurationOverflow`] for a `max_wait` beyond `u64` nanoseconds (about 584
    /// years).
    fn batch_on<R: Clock>(
        self,
        rt: &R,
        max_items: usize,
        max_wait: Duration,
    ) -> Result<Batch<Self, EachCountsOne, R>, ConfigError> {
        if max_items == 0 {
            return Err(ConfigError::Zero { field: "max_items" });
        }
        Batch::new(
            self,
            rt.clone(),
            EachCountsOne,
            u64::try_from(max_items).unwrap_or(u64::MAX),
            max_wait,
        )
    }

    /// [`batch_on`](Self::batch_on) on tokio.
    ///
    /// # Errors
    ///
    /// As [`batch_on`](Self::batch_on).
    #[cfg(feature = "tokio")]
    fn batch(
        self,
        max_items: usize,
        max_wait: Duration,
    ) -> Result<Batch<Self, EachCountsOne, crate::rt::Tokio>, ConfigError> {
        self.batch_on(&crate::rt::Tokio, max_items, max_wait)
    }

    /// Groups items into batches whose total `weigh(item)` stays within `max_weight` (bytes,
    /// cost…), emitting early after `max_wait` since the first item. An item heavier than
    /// `max_weight` by itself is emitted alone. See [`Batch`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero `max_weight` or `max_wait`;
    /// [`ConfigError::DurationOverflow`] for a `max_wait` beyond `u64` nanoseconds (about 584
    /// years).
    fn batch_weighted_on<R, W>(
        self,
        rt: &R,
        max_weight: u64,
        weigh: W,
        max_wait: Duration,
    ) -> Result<Batch<Self, W, R>, ConfigError>
    where
        R: Clock,
        W: FnMut(&Self::Item) -> u64,
    {
        Batch::new(self, rt.clone(), weigh, max_weight, max_wait)
    }

    /// [`batch_weighted_on`](Self::batch_weighted_on) on tokio.
    ///
    /// # Errors
    ///
    /// As [`batch_weighted_on`](Self::batch_weighted_on).
    #[cfg(feature = "tokio")]
    fn batch_weighted<W>(
        self,
        max_weight: u64,
        weigh: W,
        max_wait: Duration,
    ) -> Result<Batch<Self, W, crate::rt::Tokio>, ConfigError>
    where
        W: FnMut(&Self::Item) -> u64,
    {
        self.batch_weighted_on(&crate::rt::Tokio, max_weight, weigh, max_wait)
    }

    /// Delivers items at least `period` apart (fixed spacing, no burst). See [`Throttle`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero period; [`ConfigError::DurationOverflow`] for one
    /// beyond `u64` nanoseconds (about 584 years).
    fn throttle_on<R: Clock>(
        self,
        rt: &R,
        period: Duration,
    ) -> Result<Throttle<Self, R>, ConfigError> {
        Throttle::new(self, rt.clone(), period)
    }

    /// [`throttle_on`](Self::throttle_on) on tokio.
    ///
    /// # Errors
    ///
    /// As [`throttle_on`](Self::throttle_on).
    #[cfg(feature = "tokio")]
    fn throttle(self, period: Duration) -> Result<Throttle<Self, crate::rt::Tokio>, ConfigError> {
        self.throttle_on(&crate::rt::Tokio, period)
    }

    /// Delivers items as a GCRA [`RateLimiter`] admits them: bursts up to its burst, then
    /// its rate. The same limiter can pace several streams and callers. See [`RateLimit`].
    /// A stream is paced, never refused: each item waits the whole `retry_after` the limiter
    /// gives, whatever its `max_wait` and `jitter` (which bound and spread the waits of
    /// callers that can be refused).
    fn rate_limit<R: Clock>(self, limiter: RateLimiter<R>) -> RateLimit<Self, R> {
        RateLimit::new(self, limiter)
    }

    /// Yields `Err(Elapsed)` once whenever the upstream takes longer than `timeout` to produce
    /// the next item after the consumer asked for it (and goes on waiting for that item). The
    /// consumer's own time with an item is never counted. See [`TimeoutEach`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero timeout; [`ConfigError::DurationOverflow`] for one
    /// beyond `u64` nanoseconds (about 584 years).
    fn timeout_each_on<R: Clock>(
        self,
        rt: &R,
        timeout: Duration,
    ) -> Result<TimeoutEach<Self, R>, ConfigError> {
        TimeoutEach::new(self, rt.clone(), timeout)
    }

    /// [`timeout_each_on`](Self::timeout_each_on) on tokio.
    ///
    /// # Errors
    ///
    /// As [`timeout_each_on`](Self::timeout_each_on).
    #[cfg(feature = "tokio")]
    fn timeout_each(
        self,
        timeout: Duration,
    ) -> Result<TimeoutEach<Self, crate::rt::Tokio>, ConfigError> {
        self.timeout_each_on(&crate::rt::Tokio, timeout)
    }

    /// Maps every item through `f` on spawned tasks, at most `limit` at a time, delivering in
    /// input order. Work keeps running while the consumer is busy; the source is pulled only
    /// when a slot is free; a panic arrives as `Err(JoinError::Panicked)`, also one in the
    /// future's `Drop` after it returned (with that payload; the value is dropped). See
    /// [`FanOut`](crate::fan_out::FanOut) for the full contract.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for `limit == 0`.
    fn par_map_on<R, F, Fut>(
        self,
        rt: &R,
        limit: usize,
        f: F,
    ) -> Result<ParMap<R, Self, F, Fut::Output>, ConfigError>
    where
        R: Runtime,
        F: FnMut(Self::Item) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        Ok(FanOut::new(limit)?
            .runtime(rt.clone())
            .ordered()
            .run(self, f))
    }

    /// Like [`par_map_on`](Self::par_map_on), delivering in completion order.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for `limit == 0`.
    fn par_map_unordered_on<R, F, Fut>(
        self,
        rt: &R,
        limit: usize,
        f: F,
    ) -> Result<ParMap<R, Self, F, Fut::Output>, ConfigError>
    where
        R: Runtime,
        F: FnMut(Self::Item) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        Ok(FanOut::new(limit)?.runtime(rt.clone()).run(self, f))
    }

    /// [`par_map_on`](Self::par_map_on) on tokio.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for `limit == 0`.
    #[cfg(feature = "tokio")]
    fn par_map<F, Fut>(
        self,
        limit: usize,
        f: F,
    ) -> Result<ParMap<crate::rt::Tokio, Self, F, Fut::Output>, ConfigError>
    where
        F: FnMut(Self::Item) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.par_map_on(&crate::rt::Tokio, limit, f)
    }

    /// [`par_map_unordered_on`](Self::par_map_unordered_on) on tokio.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for `limit == 0`.
    #[cfg(feature = "tokio")]
    fn par_map_unordered<F, Fut>(
        self,
        limit: usize,
        f: F,
    ) -> Result<ParMap<crate::rt::Tokio, Self, F, Fut::Output>, ConfigError>
    where
        F: FnMut(Self::Item) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        self.par_map_unordered_on(&crate::rt::Tokio, limit, f)
    }

    /// The in-task variant for `!Send` work, in input order: the futures run inside the
    /// consuming task, so (like futures' `buffered`) they advance **only while the stream is
    /// polled** — do not hold locks or permits in them across a slow consumer.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for `limit == 0`.
    fn par_map_local<F, Fut>(
        self,
        limit: usize,
        f: F,
    ) -> Result<ParMapLocal<Self, F, Fut>, ConfigError>
    where
        F: FnMut(Self::Item) -> Fut,
        Fut: Future,
    {
        if limit == 0 {
            return Err(ConfigError::Zero { field: "limit" });
        }
        Ok(ParMapLocal::new(limit, true, self, f))
    }

    /// Merges `self` (high priority) with `low`: whenever both have an item ready, `self`'s
    /// goes first. See [`Prioritized`] for the opt-in guarantee against starving `low`.
    fn prioritized<L: Stream<Item = Self::Item>>(self, low: L) -> Prioritized<Self, L> {
        Prioritized::new(self, low)
    }
}

impl<S: Stream> StreamOps for S {}
