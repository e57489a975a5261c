//! Capacity is conserved: a bulkhead inside a pipeline limits concurrency exactly, with and
//! without callers cancelled at random points, and once everything is over every slot is
//! free again — never more (a slot released twice), never fewer (a slot leaked).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use tidewall::bulkhead::Bulkhead;
use tidewall::pipeline::Pipeline;
use tidewall::rt::{Runtime, TaskHandle};
use tidewall::testing::Clocked;

const CAPACITY: usize = 4;
const CALLS: u64 = 400;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Every slot is free once nothing runs: exactly `capacity` permits can be taken, no more.
fn assert_conserved<R: Runtime>(bulkhead: &Bulkhead<R>) {
    assert_eq!(
        bulkhead.available(),
        bulkhead.capacity(),
        "slots free at rest"
    );
    assert_eq!(bulkhead.queued(), 0);
    let held: Vec<_> = (0..bulkhead.capacity())
        .map(|i| {
            bulkhead
                .try_acquire()
                .unwrap_or_else(|_| panic!("slot {i} free"))
        })
        .collect();
    assert!(
        bulkhead.try_acquire().is_err(),
        "one slot more than capacity"
    );
    drop(held);
    assert_eq!(bulkhead.available(), bulkhead.capacity());
}

/// One operation running, counted until it ends or is dropped.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn enter(running: &Arc<AtomicUsize>, most: &AtomicUsize) -> Self {
        let now = running.fetch_add(1, SeqCst) + 1;
        most.fetch_max(now, SeqCst);
        Self(running.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// A seeded SplitMix64, so every run cancels at the same points.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    }
}

/// 400 calls at once through `Pipeline` with `Bulkhead::builder(4)`; with `cancel`, a
/// seeded share of them is aborted at a random moment (queued, running or done).
async fn pipeline_bulkhead_limits_concurrency<R: Runtime>(rt: Clocked<R>, cancel: bool) {
    let bulkhead = Bulkhead::builder(CAPACITY)
        .max_queue(usize::try_from(CALLS).unwrap())
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = Arc::new(
        Pipeline::builder_on(rt.clone())
            .bulkhead(bulkhead.clone())
            .build()
            .unwrap(),
    );
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut rng = Rng(0x5EED);
    let mut calls = Vec::new();
    for i in 0..CALLS {
        let (pipeline, running, most, clock) =
            (pipeline.clone(), running.clone(), most.clone(), rt.clone());
        let handle = rt.spawn(async move {
            pipeline
                .call(|| {
                    let (running, most, clock) = (running.clone(), most.clone(), clock.clone());
                    async move {
                        let _running = Running::enter(&running, &most);
                        clock.sleep(ms(1 + i % 7)).await;
                        Ok::<_, ()>(())
                    }
                })
                .await
        });
        let abort_after = (cancel && rng.below(3) == 0).then(|| ms(rng.below(300)));
        calls.push((handle, abort_after));
    }
    if cancel {
        for (handle, abort_after) in &calls {
            if let Some(after) = abort_after {
                rt.sleep(*after / 8).await;
                handle.abort();
            }
        }
    }
    let mut completed = 0;
    for (handle, abort_after) in calls {
        match handle.await {
            Ok(result) => {
                assert_eq!(result, Ok(()));
                completed += 1;
            }
            Err(e) => assert!(abort_after.is_some() && e.is_cancelled(), "{e:?}"),
        }
    }
    assert!(
        most.load(SeqCst) <= CAPACITY,
        "{} ran at once",
        most.load(SeqCst)
    );
    assert_eq!(most.load(SeqCst), CAPACITY, "the window filled");
    if !cancel {
        assert_eq!(completed, CALLS);
    }
    assert_eq!(running.load(SeqCst), 0);
    assert_conserved(&bulkhead);
}

#[test]
fn a_pipeline_bulkhead_limits_concurrency_on_every_runtime() {
    on_every_runtime!(|rt| pipeline_bulkhead_limits_concurrency(rt, false));
}

#[test]
fn a_pipeline_bulkhead_conserves_capacity_under_random_cancellation_on_every_runtime() {
    on_every_runtime!(|rt| pipeline_bulkhead_limits_concurrency(rt, true));
}
