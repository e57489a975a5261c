//! Cancellation tokens: Tidewall's (with a reason) vs tokio-util's `CancellationToken`, in
//! the same run.
//!
//! * `is_cancelled`: the hot check inside loops.
//! * `child_and_drop`: creating a child token and dropping it.
//! * `cancel_tree_100`: a root with 100 children, cancelled (wakes and propagation included).
//! * `cancelled_ready`: awaiting `cancelled()` on an already-cancelled token.
//!
//! Run: `cargo bench -p tidewall-benches --bench cancel`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main};
use futures_util::FutureExt;
use tidewall::task::CancellationToken;
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
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! { name = benches; config = tidewall_benches::criterion(); targets = cancel_tokens }
}
criterion_main!(group::benches);
