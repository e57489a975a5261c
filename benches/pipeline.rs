//! The full 5-policy Tidewall pipeline on the happy path (every stage admits, the first attempt
//! succeeds) vs the bare future, plus a smaller tower stack for scale.
//!
//! * `tidewall_5_policies`: deadline 5 s → rate limiter (10^9/s, never denies) → bulkhead 64
//!   → retry (exponential from 10 ms, never used) → breaker (defaults) → attempt timeout 1 s.
//! * `tidewall_5_policies_tsc_limiter`: the same with the limiter on `tsc_clock()`; then the
//!   happy path reads no system clock at all (the pipeline reads the clock only to wait).
//! * `tower_2_layers`: tower 0.5 `ConcurrencyLimitLayer(64)` + `TimeoutLayer(1 s)` around a
//!   `service_fn`, called as `ready().await?.call(())`. It is NOT the same work (2 layers,
//!   no rate limit, retry or breaker), only the nearest common stack.
//! * `bare_future`: `async { Ok(1) }` awaited, the floor.
//!
//! All run with `to_async` on a current-thread tokio runtime with timers enabled. The
//! operation is ready on its first poll, so Tidewall registers no timer (it arms the attempt
//! timeout only when the operation is pending); tower's `Timeout` creates one per call.
//!
//! Run: `cargo bench -p tidewall-benches --bench pipeline`.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main};
use tidewall::Backoff;
use tidewall::breaker::CircuitBreaker;
use tidewall::bulkhead::Bulkhead;
use tidewall::pipeline::Pipeline;
use tidewall::rate::RateLimiter;
use tower::{Service, ServiceBuilder, ServiceExt};

const PER_SECOND: u32 = 1_000_000_000;

type FivePolicies = Pipeline<
    tidewall::rt::Tokio,
    RateLimiter,
    Bulkhead,
    tidewall::pipeline::RetryStage,
    CircuitBreaker,
>;

/// Deadline 5 s → rate limiter (never denies) → bulkhead 64 → retry → breaker → 1 s timeout.
fn five_policies(tsc_limiter: bool) -> FivePolicies {
    let limiter = RateLimiter::builder(PER_SECOND, Duration::from_secs(1)).burst(PER_SECOND);
    let limiter = if tsc_limiter {
        limiter.tsc_clock()
    } else {
        limiter
    };
    Pipeline::builder()
        .deadline(Duration::from_secs(5))
        .rate_limit(limiter.build().unwrap())
        .bulkhead(Bulkhead::builder(64).build().unwrap())
        .retry(
            Backoff::exponential(Duration::from_millis(10))
                .build()
                .unwrap(),
        )
        .breaker(CircuitBreaker::builder().build().unwrap())
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

fn pipeline_5_policies(c: &mut criterion::Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pipeline = five_policies(false);
    let pipeline_tsc = five_policies(true);
    let (pipeline, pipeline_tsc) = (&pipeline, &pipeline_tsc);
    // Each variant must produce the value, or its number means nothing.
    for p in [pipeline, pipeline_tsc] {
        assert_eq!(rt.block_on(p.call(|| async { Ok::<_, ()>(1u64) })), Ok(1));
    }

    let tower_svc = ServiceBuilder::new()
        .layer(tower::limit::ConcurrencyLimitLayer::new(64))
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(1)))
        .service(tower::service_fn(|()| async {
            Ok::<_, Infallible>(black_box(1u64))
        }));
    let value = rt.block_on(async {
        let mut svc = tower_svc.clone();
        let ready = ServiceExt::<()>::ready(&mut svc).await.unwrap();
        ready.call(()).await.unwrap()
    });
    assert_eq!(value, 1);

    let mut group = c.benchmark_group("pipeline_5_policies");
    group.bench_function("bare_future", |b| {
        b.to_async(&rt)
            .iter(|| async { Ok::<_, ()>(black_box(1u64)) })
    });
    group.bench_function("tidewall_5_policies", |b| {
        b.to_async(&rt).iter(move || async move {
            pipeline
                .call(|| async { Ok::<_, ()>(black_box(1u64)) })
                .await
        })
    });
    group.bench_function("tidewall_5_policies_tsc_limiter", |b| {
        b.to_async(&rt).iter(move || async move {
            pipeline_tsc
                .call(|| async { Ok::<_, ()>(black_box(1u64)) })
                .await
        })
    });
    // `call` needs `&mut` service, which an `iter` future cannot borrow from its closure, so
    // this variant times its own loop over one clone (cloned outside the timed span).
    group.bench_function("tower_2_layers", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let mut svc = tower_svc.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let ready = ServiceExt::<()>::ready(&mut svc).await.unwrap();
                    black_box(ready.call(()).await.unwrap());
                }
                start.elapsed()
            }
        })
    });
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! { name = benches; config = tidewall_benches::criterion(); targets = pipeline_5_policies }
}
criterion_main!(group::benches);
