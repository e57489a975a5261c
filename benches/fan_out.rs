//! Bounded fan-out of 100k trivial items at limit 64, on a current-thread tokio runtime and on a
//! 2-worker multi-thread one: Tidewall `FanOut` (spawned) vs tokio `JoinSet` + `Semaphore`
//! (spawned), with futures `buffer_unordered` (in-task) for scale. Tidewall `run_local` is
//! futures' `buffer_unordered` behind an enum (the same code): its row
//! (`run_local_is_buffer_unordered`) shows how far two runs of the same code land apart in
//! this run, not a difference between the libraries.
//!
//! The multi-thread numbers swing widely on a VM that halts idle vCPUs (single runs of the same
//! variant vary 3x), so that group takes more samples; the current-thread group is the stable
//! comparison of per-item cost.
//!
//! Run: `cargo bench -p tidewall-benches --bench fan_out`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;
use tidewall::fan_out::FanOut;

const ITEMS: u64 = 100_000;
const LIMIT: usize = 64;

async fn work(i: u64) -> u64 {
    black_box(i).wrapping_mul(2)
}

async fn tidewall_spawned() -> u64 {
    let stream = FanOut::new(LIMIT).unwrap().run_iter(0..ITEMS, work);
    stream
        .fold(0u64, |sum, r| async move { sum.wrapping_add(r.unwrap()) })
        .await
}

async fn tidewall_local() -> u64 {
    let stream = FanOut::new(LIMIT)
        .unwrap()
        .run_local(futures_util::stream::iter(0..ITEMS), work);
    stream
        .fold(0u64, |sum, r| async move { sum.wrapping_add(r) })
        .await
}

async fn futures_buffer_unordered() -> u64 {
    let stream = futures_util::stream::iter(0..ITEMS)
        .map(work)
        .buffer_unordered(LIMIT);
    stream
        .fold(0u64, |sum, r| async move { sum.wrapping_add(r) })
        .await
}

async fn joinset_semaphore() -> u64 {
    let permits = Arc::new(tokio::sync::Semaphore::new(LIMIT));
    let mut set = tokio::task::JoinSet::new();
    let mut sum = 0u64;
    for i in 0..ITEMS {
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        set.spawn(async move {
            let _permit = permit;
            work(i).await
        });
        while let Some(done) = set.try_join_next() {
            sum = sum.wrapping_add(done.unwrap());
        }
    }
    while let Some(done) = set.join_next().await {
        sum = sum.wrapping_add(done.unwrap());
    }
    sum
}

fn fan_out(c: &mut criterion::Criterion) {
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let expected: u64 = (0..ITEMS).map(|i| i * 2).sum();
    // Each variant must compute the same result, or its number means nothing.
    for (name, sum) in [
        ("tidewall_spawned", multi.block_on(tidewall_spawned())),
        ("tidewall_local", multi.block_on(tidewall_local())),
        (
            "futures_buffer_unordered",
            multi.block_on(futures_buffer_unordered()),
        ),
        ("joinset_semaphore", multi.block_on(joinset_semaphore())),
    ] {
        assert_eq!(sum, expected, "{name} lost or duplicated items");
    }
    for (flavor, rt, samples) in [
        ("current_thread", &current, 20),
        ("multi_thread_2", &multi, 40),
    ] {
        let mut group = c.benchmark_group(format!("fan_out_100k_limit_64/{flavor}"));
        group.throughput(Throughput::Elements(ITEMS));
        group.sample_size(samples);
        group.bench_function("tidewall_spawned", |b| {
            b.to_async(rt).iter(tidewall_spawned)
        });
        group.bench_function("joinset_semaphore", |b| {
            b.to_async(rt).iter(joinset_semaphore)
        });
        group.bench_function("futures_buffer_unordered", |b| {
            b.to_async(rt).iter(futures_buffer_unordered)
        });
        group.bench_function("run_local_is_buffer_unordered", |b| {
            b.to_async(rt).iter(tidewall_local)
        });
        group.finish();
    }
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! { name = benches; config = tidewall_benches::criterion(); targets = fan_out }
}
criterion_main!(group::benches);
