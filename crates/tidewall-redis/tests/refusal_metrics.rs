//! A Redis limit counts each answer that refuses once, in `tidewall_rejections_total` under
//! `redis_rate` or `redis_bulkhead` and its name, whichever front asked (a method, a tower
//! layer, a pipeline), and never the tries a wait made on the way. One test: it installs the
//! global metrics recorder.

mod common;

use std::time::Duration;

use common::RedisServer;
use common::metrics::{Counters, row};
use tidewall::pipeline::Pipeline;
use tidewall::rt::Tokio;
use tidewall::tower::{AdmitLayer, AdmitMode};
use tidewall::{Deadline, Error, Rejected};
use tidewall_redis::{RedisBulkhead, RedisConn, RedisRateLimiter, WhenUnavailable};
use tower::{Service as _, ServiceExt as _};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusing_answer_counts_once_under_the_limits_kind_and_name() {
    let snapshotter = common::metrics::install_recorder();
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    let dead = common::unreachable_conn();

    // A rate limit of two cells an hour: two admissions, then refusals from Redis, from the
    // remembered denial, for more cells than the burst, and a wait that cannot end in time
    // (it asks at least once; its tries are not refusals of their own).
    let rate = RedisRateLimiter::builder(&conn, "r", 1, Duration::from_secs(3600))
        .burst(2)
        .deadline(Duration::from_secs(1))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    rate.verify().await.unwrap();
    assert_eq!(rate.check().await, Ok(()));
    assert_eq!(rate.check().await, Ok(()));
    assert!(matches!(
        rate.check().await,
        Err(Rejected::RateLimited { .. })
    ));
    assert!(matches!(
        rate.check_n(1).await,
        Err(Rejected::RateLimited { .. })
    ));
    assert_eq!(
        rate.check_n(3).await,
        Err(Rejected::InsufficientCapacity { burst: 2 })
    );
    let soon = Deadline::after(&Tokio, Duration::from_millis(50));
    assert_eq!(
        rate.until_ready_before(soon).await,
        Err(Rejected::DeadlineExceeded)
    );
    // Through a shedding tower layer and a pipeline: one refusal each.
    let mut shedding = tower::ServiceBuilder::new()
        .layer(AdmitLayer::new(rate.clone(), AdmitMode::Reject))
        .service_fn(|x: u32| async move { Ok::<_, Error<std::convert::Infallible>>(x) });
    let refused = shedding.ready().await.unwrap().call(1).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Rejected::RateLimited { .. }))),
        "{refused:?}"
    );
    let pipeline = Pipeline::builder()
        .deadline(Duration::from_millis(50))
        .rate_limit(rate.clone())
        .build()
        .unwrap();
    let refused = pipeline.call(|| async { Ok::<_, ()>(()) }).await;
    assert_eq!(refused, Err(Error::Rejected(Rejected::DeadlineExceeded)));

    // A bulkhead of one slot: held, then full, then a wait that tries every few
    // milliseconds until its deadline (many full answers, one refusal).
    let bulkhead = RedisBulkhead::builder(&conn, "b", 1)
        .deadline(Duration::from_secs(1))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    bulkhead.verify().await.unwrap();
    let held = bulkhead.try_acquire().await.unwrap();
    assert_eq!(
        bulkhead.try_acquire().await.map(drop),
        Err(Rejected::BulkheadFull)
    );
    let deadline = Deadline::after(&Tokio, Duration::from_millis(100));
    assert_eq!(
        bulkhead.acquire_before(deadline).await.map(drop),
        Err(Rejected::DeadlineExceeded)
    );
    drop(held);
    // Released in the background; once Redis holds no lease, admitted, which counts nothing.
    server.until_no_lease(bulkhead.key()).await;
    drop(bulkhead.try_acquire().await.unwrap());

    // Redis unreachable: the closed policy refuses, and a local share refuses once its
    // slot is taken (counted by the limit alone: the share reports nothing of its own).
    let closed = RedisRateLimiter::builder(&dead, "closed", 10, Duration::from_secs(1))
        .deadline(Duration::from_millis(200))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    assert_eq!(closed.check().await, Err(Rejected::BackendUnavailable));
    let shared = RedisBulkhead::builder(&dead, "local", 2)
        .deadline(Duration::from_millis(200))
        .when_unavailable(WhenUnavailable::Local { share: 0.5 })
        .build()
        .unwrap();
    let local = shared.try_acquire().await.unwrap();
    assert!(!local.is_shared());
    assert_eq!(
        shared.try_acquire().await.map(drop),
        Err(Rejected::BulkheadFull)
    );
    drop(local);

    // Limits that never refuse have every reason they can give registered, at zero.
    let _idle_rate = RedisRateLimiter::builder(&conn, "idle", 1, Duration::from_secs(1))
        .build()
        .unwrap();
    let _idle_bulkhead = RedisBulkhead::builder(&conn, "idle", 1).build().unwrap();

    // One snapshot: taking one resets the counters.
    let mut refusals = Counters::take(&snapshotter).rejections();
    let idle: Vec<_> = refusals
        .iter()
        .filter(|(_, name, _, _)| name == "idle")
        .map(|(policy, _, reason, n)| (policy.as_str(), reason.as_str(), *n))
        .collect();
    assert_eq!(
        idle,
        [
            ("redis_bulkhead", "backend_unavailable", 0),
            ("redis_bulkhead", "bulkhead_full", 0),
            ("redis_bulkhead", "deadline_exceeded", 0),
            ("redis_rate", "backend_unavailable", 0),
            ("redis_rate", "deadline_exceeded", 0),
            ("redis_rate", "insufficient_capacity", 0),
            ("redis_rate", "rate_limited", 0),
        ]
    );
    // The local share registered no series of its own, not even at zero.
    assert!(
        refusals
            .iter()
            .all(|(policy, _, _, _)| policy.starts_with("redis_") || policy == "breaker"),
        "{refusals:?}"
    );
    refusals.retain(|(_, _, _, n)| *n > 0);
    assert_eq!(
        refusals,
        vec![
            row("redis_bulkhead", "b", "bulkhead_full", 1),
            row("redis_bulkhead", "b", "deadline_exceeded", 1),
            row("redis_bulkhead", "local", "bulkhead_full", 1),
            row("redis_rate", "closed", "backend_unavailable", 1),
            row("redis_rate", "r", "deadline_exceeded", 2),
            row("redis_rate", "r", "insufficient_capacity", 1),
            row("redis_rate", "r", "rate_limited", 3),
        ],
    );
}
