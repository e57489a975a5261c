//! Retry wrapper on the success path: the bare future vs Tidewall vs backon.
//!
//! Every variant is polled to completion with a no-op waker (`now_or_never`), so the numbers
//! are the wrapper's own cost, not an executor's. Run: `cargo bench -p tidewall-benches --bench retry`.

use std::future::IntoFuture;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main};
use futures_util::FutureExt;
use tidewall::{Backoff, RetryExt};

async fn op(x: u64) -> Result<u64, std::io::Error> {
    Ok(black_box(x))
}

fn retry_success_path(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("retry_success_path");
    let backoff = Backoff::exponential(Duration::from_millis(100))
        .max_attempts(4)
        .build()
        .unwrap();
    group.bench_function("bare_future", |b| {
        b.iter(|| op(black_box(1)).now_or_never())
    });
    group.bench_function("tidewall", |b| {
        b.iter(|| {
            RetryExt::retry(|| op(black_box(1)), black_box(backoff))
                .into_future()
                .now_or_never()
        });
    });
    group.bench_function("backon", |b| {
        use backon::Retryable;
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_times(3);
        b.iter(|| Retryable::retry(|| op(black_box(1)), black_box(builder)).now_or_never());
    });
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! { name = benches; config = tidewall_benches::criterion(); targets = retry_success_path }
}
criterion_main!(group::benches);
