//! Capacity is conserved: a bulkhead inside a pipeline limits concurrency exactly, with and
//! without callers cancelled at random points, and once everything is over every slot is
//! free again — never more (a slot released twice), never fewer (a slot leaked).

mod common;
mod support;

use std::sync::Arc;

use support::{Gauge, Rng, assert_conserved, ms};
use tidewall::bulkhead::Bulkhead;
use tidewall::pipeline::Pipeline;
use tidewall::rt::{Clock, Runtime, Spawn, TaskHandle};
use tidewall::testing::Clocked;

const CAPACITY: usize = 4;
const CALLS: u64 = 400;

/// 400 calls at once through `Pipeline` with `Bulkhead::builder(4)`; with `cancel`, a
/// seeded share of them is aborted at a random moment (queued, running or done).
async fn pipeline_bulkhead_limits_concurrency<R: Runtime>(rt: Clocked<R>, cancel: bool) {
    let bulkhead = Bulkhead::builder(CAPACITY)
        .max_queue(usize::try_from(CALLS).unwrap())
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = Arc::new(
        Pipeline::builder()
            .runtime(rt.clone())
            .bulkhead(bulkhead.clone())
            .build()
            .unwrap(),
    );
    let gauge = Gauge::default();
    let mut rng = Rng::new(0x5EED);
    let mut calls = Vec::new();
    for i in 0..CALLS {
        let (pipeline, gauge, clock) = (pipeline.clone(), gauge.clone(), rt.clone());
        let handle = rt.spawn(async move {
            pipeline
                .call(|| {
                    let (gauge, clock) = (gauge.clone(), clock.clone());
                    async move {
                        let _running = gauge.enter();
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
    assert!(gauge.most() <= CAPACITY, "{} ran at once", gauge.most());
    assert_eq!(gauge.most(), CAPACITY, "the window filled");
    if !cancel {
        assert_eq!(completed, CALLS);
    }
    assert_eq!(gauge.now(), 0);
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
