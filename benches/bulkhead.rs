//! Bulkhead permit round trip (take a slot, release it) with free slots: Tidewall `Bulkhead` vs
//! a bare tokio `Semaphore`, both sized 64 and uncontended.
//!
//! * `try_acquire`: the synchronous form, `drop(x.try_acquire().unwrap())`.
//! * `acquire_await`: the async form, `drop(x.acquire().await.unwrap())`, run with criterion's
//!   `to_async` on a current-thread tokio runtime. A free slot is taken on the first poll, so
//!   this is the cost of the future itself, not of waiting.
//!
//! Tidewall adds the reject-when-full policy, the bounded FIFO queue, the wait limit and the
//! counters on top of what the semaphore does; this measures what that costs when nobody waits.
//!
//! Run: `cargo bench -p tidewall-benches --bench bulkhead`.

use criterion::{criterion_group, criterion_main};
use tidewall::bulkhead::Bulkhead;
use tokio::sync::Semaphore;

const SLOTS: usize = 64;

fn bulkhead_permit(c: &mut criterion::Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bulkhead = Bulkhead::builder(SLOTS).build().unwrap();
    let semaphore = Semaphore::new(SLOTS);
    let bulkhead = &bulkhead;
    let semaphore = &semaphore;

    let mut group = c.benchmark_group("bulkhead_permit");
    group.bench_function("try_acquire/tidewall", |b| {
        b.iter(|| drop(bulkhead.try_acquire().unwrap()))
    });
    group.bench_function("try_acquire/tokio_semaphore", |b| {
        b.iter(|| drop(semaphore.try_acquire().unwrap()))
    });
    group.bench_function("acquire_await/tidewall", |b| {
        b.to_async(&rt)
            .iter(move || async move { drop(bulkhead.acquire().await.unwrap()) })
    });
    group.bench_function("acquire_await/tokio_semaphore", |b| {
        b.to_async(&rt)
            .iter(move || async move { drop(semaphore.acquire().await.unwrap()) })
    });
    group.finish();
    // Every permit must have been released, or later iterations measured a full bulkhead.
    assert_eq!(bulkhead.in_flight(), 0);
    assert_eq!(semaphore.available_permits(), SLOTS);
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! { name = benches; config = tidewall_benches::criterion(); targets = bulkhead_permit }
}
criterion_main!(group::benches);
