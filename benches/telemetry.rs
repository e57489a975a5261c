//! What telemetry costs a call, on the happy path (every stage admits, the operation is ready
//! at once). Two paths:
//!
//! * `telemetry_pipeline`: a pipeline named `bench` with a bulkhead (64), a retry (4
//!   attempts, never used) and a breaker (defaults), around a ready operation;
//! * `telemetry_breaker`: a breaker's closed path, `try_acquire` then `success`.
//!
//! Variants, by how the crate was built:
//!
//! * without the `telemetry` feature (Tidewall's `metrics` compiled out): `compiled_out`;
//! * with it: `no_recorder` (the policies are built before any recorder is installed, so
//!   every handle is the `metrics` crate's no-op) and `prometheus` (built under
//!   metrics-exporter-prometheus's recorder: atomic counters and a summary per histogram).
//!
//! With metrics compiled in, a pipeline call also reads the clock twice (start and end) for
//! its duration histogram, and counts its outcome; a breaker call counts its outcome.
//!
//! Run both builds, one after the other:
//! `cargo bench -p tidewall-benches --bench telemetry` and
//! `cargo bench -p tidewall-benches --bench telemetry --features telemetry`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tidewall::Backoff;
use tidewall::breaker::CircuitBreaker;
use tidewall::bulkhead::Bulkhead;
use tidewall::pipeline::{Pipeline, RetryStage};
use tokio::runtime::Runtime;

type Stack = Pipeline<tidewall::rt::Tokio, (), Bulkhead, RetryStage, CircuitBreaker>;

fn pipeline() -> Stack {
    Pipeline::builder()
        .name("bench")
        .bulkhead(Bulkhead::builder(64).name("bench").build().unwrap())
        .retry(
            Backoff::exponential(Duration::from_millis(10))
                .max_attempts(4)
                .build()
                .unwrap(),
        )
        .breaker(CircuitBreaker::builder().name("bench").build().unwrap())
        .build()
        .unwrap()
}

fn breaker() -> CircuitBreaker {
    CircuitBreaker::builder().name("bench").build().unwrap()
}

/// The variants this build has: a label, and the pipeline and breaker built under its
/// recorder (handles are registered when the policies are built: they keep that recorder).
fn variants() -> Vec<(&'static str, Stack, CircuitBreaker)> {
    #[cfg(not(feature = "telemetry"))]
    return vec![("compiled_out", pipeline(), breaker())];
    #[cfg(feature = "telemetry")]
    {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let (on_pipeline, on_breaker) =
            metrics::with_local_recorder(&recorder, || (pipeline(), breaker()));
        vec![
            ("no_recorder", pipeline(), breaker()),
            ("prometheus", on_pipeline, on_breaker),
        ]
    }
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let built = variants();
    let mut group = c.benchmark_group("telemetry_pipeline");
    for (label, pipeline, _) in &built {
        let value = rt.block_on(pipeline.call(|| async { Ok::<_, ()>(black_box(1u64)) }));
        assert_eq!(value, Ok(1));
        group.bench_function(*label, |b| {
            b.to_async(&rt)
                .iter(|| pipeline.call(|| async { Ok::<_, ()>(black_box(1u64)) }));
        });
    }
    group.finish();
    let mut group = c.benchmark_group("telemetry_breaker");
    for (label, _, breaker) in &built {
        group.bench_function(*label, |b| {
            b.iter(|| breaker.try_acquire().unwrap().success());
        });
    }
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! { name = benches; config = tidewall_benches::criterion(); targets = bench }
}
criterion_main!(group::benches);
