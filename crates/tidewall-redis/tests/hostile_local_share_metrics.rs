//! Black-box test, from the public docs only, of a Redis bulkhead's `Local` share in a wait
//! that ends admitted. The crate docs: "each answer that refuses [...] once per call (a wait
//! that asks again counts only its final answer); the `Local` share reports nothing of its
//! own"; the telemetry table for `tidewall_rejections_total`: "a wait that ends admitted is
//! not one". So a wait that the share admits once a slot frees counts nothing, and a wait
//! that runs out counts once, in the limit's series, however often it asked the share.
//!
//! One test: it installs the global metrics recorder.

mod common;

use std::time::Duration;

use common::metrics::{Counters, row};
use tidewall::pipeline::Pipeline;
use tidewall::rt::Tokio;
use tidewall::{Deadline, Rejected};
use tidewall_redis::{RedisBulkhead, WhenUnavailable};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_the_local_share_admits_counts_no_refusal() {
    let snapshotter = common::metrics::install_recorder();
    // Nothing listens: every call fails at once, and the `Local` share decides.
    let dead = common::unreachable_conn();
    let shared = RedisBulkhead::builder(&dead, "s49-share-wait", 4)
        .deadline(Duration::from_millis(200))
        .when_unavailable(WhenUnavailable::Local { share: 0.5 })
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .deadline(Duration::from_secs(3))
        .bulkhead(shared.clone())
        .build()
        .unwrap();
    for front in ["acquire_before", "pipeline"] {
        // Both slots of the share held, one freed 300 ms into the wait.
        let first = shared.try_acquire().await.unwrap();
        let second = shared.try_acquire().await.unwrap();
        assert!(!first.is_shared() && !second.is_shared());
        let freer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(first);
        });
        match front {
            "acquire_before" => {
                let waited = shared
                    .acquire_before(Deadline::after(&Tokio, Duration::from_secs(3)))
                    .await;
                assert!(waited.is_ok_and(|permit| !permit.is_shared()));
            }
            _ => assert_eq!(pipeline.call(|| async { Ok::<_, ()>(()) }).await, Ok(())),
        }
        freer.await.unwrap();
        drop(second);
    }
    // One refusal at once, and one wait of 300 ms that runs out: one count each.
    let first = shared.try_acquire().await.unwrap();
    let second = shared.try_acquire().await.unwrap();
    assert_eq!(
        shared.try_acquire().await.map(drop),
        Err(Rejected::BulkheadFull)
    );
    let ran_out = shared
        .acquire_before(Deadline::after(&Tokio, Duration::from_millis(300)))
        .await
        .map(drop)
        .unwrap_err();
    drop((first, second));

    let refusals = Counters::take(&snapshotter).refusals();
    let mut expected = vec![row("redis_bulkhead", "s49-share-wait", "bulkhead_full", 1)];
    if ran_out == Rejected::BulkheadFull {
        expected[0].3 = 2;
    } else {
        expected.push(row("redis_bulkhead", "s49-share-wait", ran_out.kind(), 1));
    }
    expected.sort();
    assert_eq!(
        refusals, expected,
        "two waits that ended admitted count nothing; one refusal at once and one wait that \
         ran out count once each"
    );
}
