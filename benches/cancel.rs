//! Cancellation tokens: Tidewall's (with a reason) vs tokio-util's `CancellationToken`, in
//! the same run.
//!
//! * `is_cancelled`: the hot check inside loops.
//! * `child_and_drop`: creating a child token and dropping it.
//! * `cancel_tree_100`: a root with 100 children, cancelled (wakes and propagation included).
//! * `cancelled_ready`: awaiting `cancelled()` on an already-cancelled token.
//! * `pool_10k`: 10,000 trivial jobs through a `WorkerPool` of 2 workers (queue 1024, results
//!   awaited) vs one `tokio::spawn` per job, on a 2-worker tokio runtime.
//!
//! Run: `cargo bench -p tidewall-benches --bench cancel`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main};
use futures_util::FutureExt;
use tidewall::rt::Tokio;
use tidewall::task::{CancellationToken, Exit, pool::WorkerPool};
use tokio_util::sync::CancellationToken as TokioToken;

fn cancel_tokens(c: &mut criterion::Criterion) {
    let mut group = c.benchmark_group("cancel_token");
    let (ours, theirs) = (CancellationToken::new(), TokioToken::new());
    group.bench_function("is_cancelled/tidewall", |b| {
        b.iter(|| black_box(&ours).is_cancelled())
    });
    group.bench_function("is_cancelled/tokio_util", |b| {
        b.iter(|| black_box(&theirs).is_cancelled())
    });
    group.bench_function("child_and_drop/tidewall", |b| {
        b.iter(|| drop(black_box(ours.child())))
    });
    group.bench_function("child_and_drop/tokio_util", |b| {
        b.iter(|| drop(black_box(theirs.child_token())))
    });
    group.bench_function("cancel_tree_100/tidewall", |b| {
        b.iter(|| {
            let root = CancellationToken::new();
            let children: Vec<_> = (0..100).map(|_| root.child()).collect();
            root.cancel("bench");
            assert!(children[99].is_cancelled());
        });
    });
    group.bench_function("cancel_tree_100/tokio_util", |b| {
        b.iter(|| {
            let root = TokioToken::new();
            let children: Vec<_> = (0..100).map(|_| root.child_token()).collect();
            root.cancel();
            assert!(children[99].is_cancelled());
        });
    });
    let (done, done_theirs) = (CancellationToken::new(), TokioToken::new());
    done.cancel("done");
    done_theirs.cancel();
    group.bench_function("cancelled_ready/tidewall", |b| {
        b.iter(|| done.cancelled().now_or_never().is_some())
    });
    group.bench_function("cancelled_ready/tokio_util", |b| {
        b.iter(|| done_theirs.cancelled().now_or_never().is_some())
    });
    group.finish();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("pool_10k");
    group.throughput(criterion::Throughput::Elements(10_000));
    group.bench_function("tidewall_worker_pool", |b| {
        b.to_async(&rt).iter(|| async {
            let pool = WorkerPool::builder()
                .workers(2)
                .queue(1024)
                .runtime(Tokio)
                .start(|n: u64| async move { black_box(n * 2) })
                .unwrap();
            let submitter = pool.submitter();
            let mut handles = Vec::with_capacity(10_000);
            for n in 0..10_000u64 {
                handles.push(submitter.submit(n).await.unwrap());
            }
            let mut sum = 0;
            for handle in handles {
                if let Exit::Ok(v) = handle.await {
                    sum += v;
                }
            }
            assert_eq!(sum, 99_990_000);
            pool.shutdown(std::time::Duration::from_secs(5)).await
        });
    });
    group.bench_function("tokio_spawn_per_job", |b| {
        b.to_async(&rt).iter(|| async {
            let handles: Vec<_> = (0..10_000u64)
                .map(|n| tokio::spawn(async move { black_box(n * 2) }))
                .collect();
            let mut sum = 0;
            for handle in handles {
                sum += handle.await.unwrap();
            }
            assert_eq!(sum, 99_990_000);
        });
    });
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! { name = benches; config = tidewall_benches::criterion(); targets = cancel_tokens }
}
criterion_main!(group::benches);
