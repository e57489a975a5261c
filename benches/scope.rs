//! Structured concurrency, "scope spawn+join": spawning N trivial children and waiting for all
//! of them, Tidewall `Scope` vs raw tokio vs a tokio `JoinSet`, in the same run and group, on a
//! 2-worker multi-thread tokio runtime. N = 100 and N = 1000; each child is
//! `async move { Ok::<u64, ()>(i) }`.
//!
//! * `tidewall_scope`: `Scope::builder().runtime(Tokio).build()`, `spawn` × N, `join`; the
//!   values are read back from the report's children (as the others read theirs from their
//!   handles).
//! * `tidewall_scope_discard_ok`: the same with `.discard_ok()`: each success is counted and
//!   dropped, nothing is kept per child.
//! * `tokio_spawn`: N `tokio::spawn`, then every handle awaited in spawn order.
//! * `tokio_joinset`: N `JoinSet::spawn`, then `join_next` until `None`.
//!
//! Every iteration checks its own result (the count, and the sum of the values wherever they
//! are kept), so a variant that lost or skipped children cannot report a number.
//!
//! Run: `cargo bench -p tidewall-benches --bench scope`.

use std::hint::black_box;

use criterion::{BenchmarkId, Throughput, criterion_group, criterion_main};
use tidewall::rt::Tokio;
use tidewall::task::scope::Scope;

const SIZES: [u64; 2] = [100, 1000];

/// 0 + 1 + … + (n − 1): what every variant that keeps the values must add up to.
fn expected_sum(n: u64) -> u64 {
    n * (n - 1) / 2
}

async fn tidewall_scope(n: u64) -> u64 {
    let scope = Scope::builder()
        .runtime(Tokio)
        .build::<u64, ()>()
        .expect("a valid scope");
    for i in 0..n {
        scope
            .spawn(async move { Ok(black_box(i)) })
            .await
            .expect("an open scope without a limit admits every child");
    }
    let report = scope.join().await;
    assert_eq!(report.succeeded, n, "the scope lost children");
    assert!(report.is_balanced(), "the scope's counts do not add up");
    let sum: u64 = report
        .children
        .into_iter()
        .filter_map(|child| child.exit.ok())
        .sum();
    assert_eq!(sum, expected_sum(n), "the scope lost or altered results");
    sum
}

async fn tidewall_scope_discard_ok(n: u64) -> u64 {
    let scope = Scope::builder()
        .runtime(Tokio)
        .discard_ok()
        .build::<u64, ()>()
        .expect("a valid scope");
    for i in 0..n {
        scope
            .spawn(async move { Ok(black_box(i)) })
            .await
            .expect("an open scope without a limit admits every child");
    }
    let report = scope.join().await;
    assert_eq!(report.succeeded, n, "the scope lost children");
    assert!(report.is_balanced(), "the scope's counts do not add up");
    assert!(report.children.is_empty(), "discard_ok kept a success");
    report.succeeded
}

async fn tokio_spawn(n: u64) -> u64 {
    let handles: Vec<_> = (0..n)
        .map(|i| tokio::spawn(async move { Ok::<u64, ()>(black_box(i)) }))
        .collect();
    let (mut count, mut sum) = (0u64, 0u64);
    for handle in handles {
        sum += handle
            .await
            .expect("no child panics")
            .expect("no child fails");
        count += 1;
    }
    assert_eq!(count, n, "tokio::spawn lost children");
    assert_eq!(sum, expected_sum(n), "tokio::spawn lost or altered results");
    sum
}

async fn tokio_joinset(n: u64) -> u64 {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        set.spawn(async move { Ok::<u64, ()>(black_box(i)) });
    }
    let (mut count, mut sum) = (0u64, 0u64);
    while let Some(done) = set.join_next().await {
        sum += done.expect("no child panics").expect("no child fails");
        count += 1;
    }
    assert_eq!(count, n, "the JoinSet lost children");
    assert_eq!(sum, expected_sum(n), "the JoinSet lost or altered results");
    sum
}

fn scope_spawn_join(c: &mut criterion::Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("scope_spawn_join");
    for n in SIZES {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("tidewall_scope", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| tidewall_scope(n));
        });
        group.bench_with_input(
            BenchmarkId::new("tidewall_scope_discard_ok", n),
            &n,
            |b, &n| b.to_async(&rt).iter(|| tidewall_scope_discard_ok(n)),
        );
        group.bench_with_input(BenchmarkId::new("tokio_spawn", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| tokio_spawn(n));
        });
        group.bench_with_input(BenchmarkId::new("tokio_joinset", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| tokio_joinset(n));
        });
    }
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! { name = benches; config = tidewall_benches::criterion(); targets = scope_spawn_join }
}
criterion_main!(group::benches);
