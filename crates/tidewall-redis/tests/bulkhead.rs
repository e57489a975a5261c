//! The leased bulkhead against a real redis-server: one limit across replicas, leases that
//! are renewed while held and reaped when their holder is gone, release on drop, and the
//! failure policies when Redis stops answering.

mod common;

use std::time::{Duration, Instant};

use common::{RedisServer, eventually};
use tidewall::Rejected;
use tidewall_redis::{RedisBulkhead, RedisConn, WhenUnavailable};

fn replica(server: &RedisServer, limit: u32, lease: Duration) -> RedisBulkhead {
    let conn = RedisConn::open(server.url()).unwrap();
    RedisBulkhead::builder(&conn, "db", limit)
        .lease(lease)
        .deadline(Duration::from_secs(2))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap()
}

#[tokio::test]
async fn three_replicas_hold_at_most_the_limit_and_a_release_frees_a_slot() {
    let server = RedisServer::start();
    let replicas: Vec<_> = (0..3)
        .map(|_| replica(&server, 4, Duration::from_secs(30)))
        .collect();
    let mut held = Vec::new();
    for round in 0..2 {
        for replica in &replicas {
            match replica.try_acquire().await {
                Ok(permit) => {
                    assert!(permit.is_shared());
                    held.push(permit);
                }
                Err(rejected) => {
                    assert_eq!(rejected, Rejected::BulkheadFull, "round {round}");
                }
            }
        }
    }
    assert_eq!(held.len(), 4, "six attempts, a limit of four");
    drop(held.pop());
    // The release happens in the background.
    let permit = eventually(async || replicas[2].try_acquire().await.ok()).await;
    assert!(permit.is_shared());
    assert_eq!(
        replicas[0].try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
}

#[tokio::test]
async fn a_crashed_holders_slot_returns_when_its_lease_expires() {
    let server = RedisServer::start();
    let bulkhead = replica(&server, 1, Duration::from_secs(30));
    // What a holder that died leaves behind: a lease nobody renews, 300 ms from now.
    let expiry = server.time_us() + 300_000;
    let _: () = redis::cmd("ZADD")
        .arg(bulkhead.key())
        .arg(expiry)
        .arg("crashed-holder")
        .query(&mut server.admin().unwrap())
        .unwrap();
    assert_eq!(
        bulkhead.try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
    let started = Instant::now();
    let permit = eventually(async || bulkhead.try_acquire().await.ok()).await;
    assert!(permit.is_shared());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "back soon after the lease expired"
    );
}

#[tokio::test]
async fn a_held_permit_is_renewed_past_its_lease() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(600);
    let holder = replica(&server, 1, lease);
    let other = replica(&server, 1, lease);
    let permit = holder.try_acquire().await.unwrap();
    // Four leases long: without renewal the slot would have been reaped.
    tokio::time::sleep(lease * 4).await;
    assert_eq!(
        other.try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
    drop(permit);
    eventually(async || other.try_acquire().await.ok()).await;
}

#[tokio::test]
async fn a_frozen_redis_applies_the_policy_within_the_deadline() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let build = |policy| {
        RedisBulkhead::builder(&conn, "frozen", 8)
            .deadline(Duration::from_millis(10))
            .when_unavailable(policy)
            .build()
            .unwrap()
    };
    let (closed, local) = (
        build(WhenUnavailable::Closed),
        build(WhenUnavailable::Local { share: 0.25 }),
    );
    drop(eventually(async || closed.try_acquire().await.ok()).await);
    server.freeze();
    let started = Instant::now();
    assert_eq!(
        closed.try_acquire().await.err(),
        Some(Rejected::BackendUnavailable)
    );
    assert!(started.elapsed() < Duration::from_millis(10 + 100));
    // A quarter of 8: two local slots, then full.
    let first = local.try_acquire().await.unwrap();
    let second = local.try_acquire().await.unwrap();
    assert!(!first.is_shared() && !second.is_shared());
    assert_eq!(
        local.try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
    drop((first, second));
    server.thaw();
    // The acquires that timed out while Redis was frozen may have been granted once it ran
    // them: each was followed by a release, so all 8 slots come back.
    let conn = RedisConn::open(server.url()).unwrap();
    let same_key = RedisBulkhead::builder(&conn, "frozen", 8)
        .deadline(Duration::from_secs(2))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    let mut held = Vec::new();
    eventually(async || {
        if let Ok(permit) = same_key.try_acquire().await {
            held.push(permit);
        }
        (held.len() == 8).then_some(())
    })
    .await;
}

#[tokio::test]
async fn bad_configurations_are_typed_errors() {
    let conn = RedisConn::open("redis://127.0.0.1:1").unwrap();
    assert!(RedisBulkhead::builder(&conn, "bad", 0).build().is_err());
    assert!(
        RedisBulkhead::builder(&conn, "bad", 1)
            .lease(Duration::from_millis(1))
            .build()
            .is_err()
    );
    assert!(
        RedisBulkhead::builder(&conn, "bad", 1)
            .when_unavailable(WhenUnavailable::Local { share: 2.0 })
            .build()
            .is_err()
    );
    assert!(RedisBulkhead::builder(&conn, "", 1).build().is_err());
}
