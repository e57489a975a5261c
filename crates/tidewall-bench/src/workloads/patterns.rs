//! Tidewall's own patterns on each runtime, through its runtime seam: a bounded fan-out, a
//! worker pool and a five-policy pipeline call.

use std::time::Instant;

use anyhow::{Context as _, ensure};
use futures_util::StreamExt as _;
use tidewall::Backoff;
use tidewall::breaker::CircuitBreaker;
use tidewall::bulkhead::Bulkhead;
use tidewall::fan_out::FanOut;
use tidewall::pipeline::Pipeline;
use tidewall::rate::RateLimiter;
use tidewall::rt::Runtime;
use tidewall::task::Exit;
use tidewall::task::pool::WorkerPool;

use crate::runtimes::{Rt, Spawner};

/// Which pattern.
#[derive(Debug, Clone, Copy)]
pub(super) enum Pattern {
    /// `FanOut` with 64 in flight over n inputs, results in completion order.
    FanOut,
    /// A `WorkerPool` of 2 workers and a queue of 1024, n jobs, every handle awaited.
    WorkerPool,
    /// n calls, one after another, through a pipeline of a rate limiter, a bulkhead, retry,
    /// a breaker and an attempt timeout, on an operation that yields once (so the attempt
    /// timeout is armed on the runtime's timer every call). The figure is the whole call, the
    /// operation's yield included: no baseline is subtracted (the yield workload times that
    /// yield alone, in a process of its own).
    Pipeline,
}

/// ns per item.
pub(super) fn run(rt: &Rt, pattern: Pattern, n: u64) -> anyhow::Result<f64> {
    let spawner = rt.spawner();
    let (elapsed, count, sum) = rt.run(async move {
        match spawner {
            Spawner::Tokio(_) => on(tidewall::rt::Tokio, pattern, n).await,
            Spawner::Smol(executor) => on(tidewall::rt::Smol::new(executor), pattern, n).await,
            Spawner::AsyncStd => on(tidewall::rt::AsyncStd, pattern, n).await,
        }
    })?;
    ensure!(count == n, "{pattern:?}: {count} of {n} items");
    ensure!(
        sum == n * n.saturating_sub(1) / 2,
        "{pattern:?}: the sum is off"
    );
    Ok(elapsed.as_nanos() as f64 / n as f64)
}

async fn on<R: Runtime + Clone>(
    rt: R,
    pattern: Pattern,
    n: u64,
) -> anyhow::Result<(std::time::Duration, u64, u64)> {
    let (mut count, mut sum) = (0u64, 0u64);
    // Timed: the work itself, not building the pool or shutting it down.
    let elapsed = match pattern {
        Pattern::FanOut => {
            let start = Instant::now();
            let mut results = FanOut::new(64)?
                .runtime(rt)
                .run_iter(0..n, |i| async move { i });
            while let Some(result) = results.next().await {
                sum += result.ok().context("a fan-out task panicked")?;
                count += 1;
            }
            start.elapsed()
        }
        Pattern::WorkerPool => {
            let pool = WorkerPool::builder()
                .workers(2)
                .queue(1024)
                .runtime(rt)
                .start(|i: u64| async move { i })?;
            let start = Instant::now();
            let mut handles = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
            for i in 0..n {
                handles.push(
                    pool.submit(i)
                        .await
                        .map_err(|_| anyhow::anyhow!("submit refused"))?,
                );
            }
            for handle in handles {
                match handle.await {
                    Exit::Ok(value) => {
                        sum += value;
                        count += 1;
                    }
                    other => anyhow::bail!("a job ended {other:?}"),
                }
            }
            let elapsed = start.elapsed();
            let report = pool.shutdown(std::time::Duration::from_secs(10)).await;
            ensure!(
                report.completed == n,
                "the pool completed {} of {n}",
                report.completed
            );
            elapsed
        }
        Pattern::Pipeline => {
            let pipeline = five_policies(rt)?;
            let start = Instant::now();
            for i in 0..n {
                let value = pipeline
                    .call(|| async move {
                        futures_lite::future::yield_now().await;
                        Ok::<_, std::convert::Infallible>(i)
                    })
                    .await
                    .map_err(|e| anyhow::anyhow!("pipeline call {i}: {e}"))?;
                sum += value;
                count += 1;
            }
            start.elapsed()
        }
    };
    Ok((elapsed, count, sum))
}

type FivePolicies<R> =
    Pipeline<R, RateLimiter<R>, Bulkhead<R>, tidewall::pipeline::RetryStage, CircuitBreaker<R>>;

/// Deadline 5 s → rate limiter (10^9/s, never denies) → bulkhead 64 → retry → breaker →
/// attempt timeout 1 s: the happy path through every stage.
fn five_policies<R: Runtime + Clone>(rt: R) -> anyhow::Result<FivePolicies<R>> {
    const PER_SECOND: u32 = 1_000_000_000;
    Ok(Pipeline::builder()
        .runtime(rt.clone())
        .deadline(std::time::Duration::from_secs(5))
        .rate_limit(
            RateLimiter::builder(PER_SECOND, std::time::Duration::from_secs(1))
                .burst(PER_SECOND)
                .runtime(rt.clone())
                .build()?,
        )
        .bulkhead(Bulkhead::builder(64).runtime(rt.clone()).build()?)
        .retry(Backoff::exponential(std::time::Duration::from_millis(10)).build()?)
        .breaker(CircuitBreaker::builder().runtime(rt).build()?)
        .attempt_timeout(std::time::Duration::from_secs(1))
        .build()?)
}
