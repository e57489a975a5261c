//! Shared pieces of the stress, aging and black-box tests: a seeded generator, the ages a
//! policy lives before a scenario, capacity checks, ways to drop a future at a random await
//! point, a debugging recorder's snapshots (`snapshot`) and a layer keeping what `tracing`
//! saw (`trace`).
#![allow(dead_code, unreachable_pub)]

#[cfg(all(feature = "http", feature = "toml"))]
pub mod forced;
#[cfg(feature = "metrics")]
pub mod snapshot;
#[cfg(feature = "tracing")]
pub mod trace;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};
use std::time::Duration;

use tidewall::FutureExt;
use tidewall::bulkhead::Bulkhead;
use tidewall::rt::Clock;
use tidewall_core::rng::SplitMix64;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub const HOUR: Duration = Duration::from_secs(3_600);
pub const DAY: Duration = Duration::from_secs(86_400);

/// The ages (and idle gaps) every clocked policy is exercised at: seconds, an hour, a month
/// and a century of virtual time.
pub const AGES: [Duration; 4] = [
    Duration::from_millis(2_500),
    HOUR,
    Duration::from_secs(30 * 86_400),
    Duration::from_secs(100 * 365 * 86_400),
];

/// Seeded draws from the library's own generator, so every run cancels at the same points.
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }

    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.below_or_equal(n - 1)
    }

    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// Every slot is free once nothing runs: `available() == capacity()`, nobody queued, and
/// exactly `capacity` permits can be taken, no more.
pub fn assert_conserved<R: Clock>(bulkhead: &Bulkhead<R>) {
    assert_eq!(
        bulkhead.available(),
        bulkhead.capacity(),
        "slots free at rest (in flight: {})",
        bulkhead.in_flight()
    );
    assert_eq!(bulkhead.queued(), 0, "nobody queued at rest");
    let held: Vec<_> = (0..bulkhead.capacity())
        .map(|i| {
            bulkhead
                .try_acquire()
                .unwrap_or_else(|e| panic!("slot {i} of {} free: {e}", bulkhead.capacity()))
        })
        .collect();
    assert!(
        bulkhead.try_acquire().is_err(),
        "one slot more than capacity"
    );
    drop(held);
    assert_eq!(bulkhead.available(), bulkhead.capacity());
}

/// Counts operations running now and the most that ever ran at once.
#[derive(Clone, Default)]
pub struct Gauge {
    pub now: Arc<AtomicUsize>,
    pub most: Arc<AtomicUsize>,
}

impl Gauge {
    pub fn enter(&self) -> Running {
        let n = self.now.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(n, SeqCst);
        Running(self.now.clone())
    }
    pub fn now(&self) -> usize {
        self.now.load(SeqCst)
    }
    pub fn most(&self) -> usize {
        self.most.load(SeqCst)
    }
}

/// One operation running, counted until it ends or is dropped.
pub struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Polls `fut` at most `polls` times; if it is still pending then, drops it (cancellation at
/// an await point chosen by the caller's generator).
pub struct PollLimit<F> {
    fut: Option<Pin<Box<F>>>,
    left: u64,
}

impl<F: Future> Future for PollLimit<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            self.fut = None;
            return Poll::Ready(Some(out));
        }
        if self.left == 0 {
            self.fut = None;
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Pending
    }
}

pub fn poll_limit<F: Future>(fut: F, polls: u64) -> PollLimit<F> {
    PollLimit {
        fut: Some(Box::pin(fut)),
        left: polls,
    }
}

/// Runs `fut`, or drops it at a random point: after a random virtual time, or after a random
/// number of polls, or not at all. `None` when it was dropped.
pub async fn maybe_cancel<R: Clock, F: Future>(rt: &R, rng_draw: u64, fut: F) -> Option<F::Output> {
    match rng_draw % 4 {
        0 => Some(fut.await),
        1 => fut.timeout_on(rt, ms(rng_draw % 97)).await.ok(),
        2 => poll_limit(fut, (rng_draw >> 8) % 6).await,
        _ => fut
            .timeout_on(rt, Duration::from_micros(rng_draw % 5_000))
            .await
            .ok(),
    }
}

/// Hands out its input in reads of the given sizes (cycling), to exercise every split.
pub struct Chunky {
    pub data: Vec<u8>,
    pub pos: usize,
    pub sizes: Vec<usize>,
    pub turn: usize,
}

impl futures_util::AsyncRead for Chunky {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let size = self.sizes[self.turn % self.sizes.len()].max(1);
        self.turn += 1;
        let n = size.min(buf.len()).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Poll::Ready(Ok(n))
    }
}
