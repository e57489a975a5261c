//! A master of a real Redis Cluster killed mid-run: while its replica is promoted, every
//! decision returns within its deadline under the failure policy; afterwards decisions are
//! exact again, no bulkhead lease is leaked and the breaker quorum answers.

mod common;
mod local_cluster;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use local_cluster::Cluster;
use tidewall::Rejected;
use tidewall::breaker::CircuitBreaker;
use tidewall::rt::Tokio;
use tidewall_redis::{BreakerQuorum, RedisBulkhead, RedisConn, RedisRateLimiter, WhenUnavailable};

const DEADLINE: Duration = Duration::from_millis(50);
/// 200 cells a second: one every 5 ms.
const PER_SECOND: u32 = 200;
const BURST: u32 = 10;

/// The master serving the slot of `name`'s limits (its hash tag, partition `default`):
/// one kill takes every limit of that name through the failover.
fn master_of_name(cluster: &Cluster, name: &str) -> u16 {
    cluster.master_of(&format!("{{{name}:default}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_within_the_deadline_and_limits_are_exact_after() {
    let mut cluster = Cluster::start();
    let conn = RedisConn::cluster_builder(cluster.urls())
        .connect()
        .await
        .unwrap();
    let name = "hot";
    let master = master_of_name(&cluster, name);
    let limiter = RedisRateLimiter::builder(&conn, name, PER_SECOND, Duration::from_secs(1))
        .burst(BURST)
        .deadline(DEADLINE)
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    let bulkhead = RedisBulkhead::builder(&conn, name, 3)
        .lease(Duration::from_secs(60))
        .deadline(DEADLINE)
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    let breaker = CircuitBreaker::builder().runtime(Tokio).build().unwrap();
    let quorum = BreakerQuorum::builder(&conn, name, breaker)
        .deadline(DEADLINE)
        .build()
        .unwrap();
    limiter.verify().await.unwrap();
    bulkhead.verify().await.unwrap();
    quorum.verify().await.unwrap();

    // Three leases held through the failover.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(bulkhead.try_acquire().await.unwrap());
    }

    // Ask as fast as the limit allows for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let asking = tokio::spawn(common::ask_until(limiter.clone(), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    cluster.kill(master);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_until_healthy();
        cluster
    })
    .await
    .unwrap();
    let healed = Instant::now();
    // Two seconds more on the promoted replica.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let decisions = asking.await.unwrap();
    let ended = Instant::now();

    // During the failover: every decision within its deadline (and the scheduler's slack),
    // refused by the failure policy while the master was gone, never admitted blindly.
    let slowest = decisions.iter().map(|d| d.took).max().unwrap();
    assert!(
        slowest <= DEADLINE + Duration::from_millis(250),
        "a decision took {slowest:?} with a {DEADLINE:?} deadline"
    );
    let unavailable = decisions
        .iter()
        .filter(|d| d.outcome == Err(Rejected::BackendUnavailable))
        .count();
    assert!(unavailable > 0, "the failover was seen by the limiter");
    assert!(
        decisions
            .iter()
            .filter(|d| d.at + d.took < killed)
            .all(|d| d.outcome != Err(Rejected::BackendUnavailable)),
        "nothing that ended before the kill was unavailable"
    );

    // Exact after: from the first cell admitted by the promoted replica, GCRA from rest (the
    // outage outlasted a burst's worth of intervals, and lost writes, if any, are older still):
    // the burst plus one cell per interval, and the asker, saturating it, gets nearly all.
    let interval = Duration::from_secs(1) / PER_SECOND;
    let after: Vec<_> = decisions
        .iter()
        .filter(|d| d.at > killed && d.outcome.is_ok())
        .collect();
    let first = after.first().expect("admitted again after the failover").at;
    let span = ended - first;
    let most = BURST as usize + (span.as_micros() / interval.as_micros()) as usize + 1;
    let least = (span.as_micros() / interval.as_micros()) as usize * 9 / 10;
    assert!(
        (least..=most).contains(&after.len()),
        "{} admitted in {span:?} after the failover: GCRA allows {least}..={most}",
        after.len()
    );
    assert!(
        first < healed + Duration::from_secs(1),
        "the client found the new master"
    );

    // The leases held through the failover are released, and the whole limit is free again:
    // nothing leaked.
    drop(held);
    common::whole_limit_free(&bulkhead, 3).await;

    // The quorum answers from the promoted replica.
    quorum.refresh().await.unwrap();
    drop(cluster);
}
