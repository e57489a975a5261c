//! The Redis limiter in a Tidewall pipeline and behind a tower layer, unchanged.

mod common;

use std::time::Duration;

use common::{RedisServer, eventually};
use tidewall::pipeline::Pipeline;
use tidewall::tower::{AdmitLayer, AdmitMode};
use tidewall::{Error, Rejected};
use tidewall_redis::{RedisBulkhead, RedisConn, RedisRateLimiter, WhenUnavailable};
use tower::{Service, ServiceExt};

fn one_per_ten_seconds(server: &RedisServer, name: &str) -> RedisRateLimiter {
    let conn = RedisConn::open(server.url()).unwrap();
    RedisRateLimiter::builder(&conn, name, 1, Duration::from_secs(10))
        .burst(1)
        .deadline(Duration::from_secs(2))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap()
}

/// The pipeline's deadline (5 s) is not what this is about: the limiter is connected and
/// its script loaded first, and the deadline is long enough for a loaded machine's round
/// trip, yet well short of the 10 s the next cell is away.
#[tokio::test]
async fn a_pipeline_takes_the_redis_limiter_as_its_rate_limit() {
    let server = RedisServer::start();
    let limiter = one_per_ten_seconds(&server, "pipeline");
    // Connected and the script loaded (a zero-cell check spends nothing).
    eventually(async || limiter.check_n(0).await.ok()).await;
    let pipeline = Pipeline::builder()
        .deadline(Duration::from_secs(5))
        .rate_limit(limiter)
        .build()
        .unwrap();
    let first = pipeline.call(|| async { Ok::<_, ()>(7) }).await;
    assert_eq!(first, Ok(7));
    // The next cell is 10 s away, past the 5 s deadline: refused at once.
    let second = pipeline.call(|| async { Ok::<_, ()>(8) }).await;
    assert_eq!(second, Err(Error::Rejected(Rejected::DeadlineExceeded)));
}

/// A waiting layer admits the first call on its first try: its 5 s wait bounds the round trip
/// (the limiter connected and its script loaded first), not the cell, which is free. A layer
/// that may not wait (`max_wait(ZERO)`) over the same limiter is then refused: the next cell
/// is 10 s away. (A caller past its deadline being answered at all is `rate.rs`'s.)
#[tokio::test]
async fn a_tower_service_admits_through_redis() {
    let server = RedisServer::start();
    let limiter = one_per_ten_seconds(&server, "tower");
    eventually(async || limiter.check_n(0).await.ok()).await;
    // The service's own errors become `Error::Inner`: the layer refuses in the same type.
    let service = |max_wait| {
        tower::ServiceBuilder::new()
            .layer(AdmitLayer::new(limiter.clone(), AdmitMode::WaitCall).max_wait(max_wait))
            .map_err(Error::Inner)
            .service_fn(|x: u32| async move { Ok::<_, std::convert::Infallible>(x * 2) })
    };
    let mut waiting = service(Duration::from_secs(5));
    let answer = waiting.ready().await.unwrap().call(21).await;
    assert_eq!(answer, Ok(42));
    let mut impatient = service(Duration::ZERO);
    let refused = impatient.ready().await.unwrap().call(1).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Rejected::DeadlineExceeded))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_shedding_tower_service_refuses_with_the_redis_limiters_hint() {
    let server = RedisServer::start();
    let layer = AdmitLayer::new(one_per_ten_seconds(&server, "shed"), AdmitMode::Reject);
    let mut service = tower::ServiceBuilder::new()
        .layer(layer)
        .service_fn(|x: u32| async move { Ok::<_, Error<std::convert::Infallible>>(x * 2) });
    assert_eq!(service.ready().await.unwrap().call(21).await.unwrap(), 42);
    match service.ready().await.unwrap().call(1).await {
        Err(Error::Rejected(Rejected::RateLimited { retry_after })) => assert!(
            retry_after > Duration::from_secs(9) && retry_after <= Duration::from_secs(10),
            "the next cell is about 10 s away, got {retry_after:?}"
        ),
        other => panic!("expected the limiter's own refusal, got {other:?}"),
    }
}

/// The pipeline's deadline (5 s) only bounds the call: the bulkhead is connected and its
/// scripts loaded first, so a loaded machine's slow round trips cannot make it expire.
#[tokio::test]
async fn a_pipeline_holds_a_redis_bulkhead_slot_for_the_whole_call() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let bulkhead = RedisBulkhead::builder(&conn, "pipeline", 1)
        .deadline(Duration::from_secs(2))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    // Connected and the scripts loaded (verify releases what it takes).
    eventually(async || bulkhead.verify().await.ok()).await;
    let other = bulkhead.clone();
    let pipeline = Pipeline::builder()
        .deadline(Duration::from_secs(5))
        .bulkhead(bulkhead)
        .build()
        .unwrap();
    let during = pipeline
        .call(|| {
            let other = other.clone();
            async move {
                // The one slot is held by this call: nobody else gets it meanwhile.
                Ok::<_, ()>(other.try_acquire().await.err())
            }
        })
        .await;
    assert_eq!(during, Ok(Some(Rejected::BulkheadFull)));
}
