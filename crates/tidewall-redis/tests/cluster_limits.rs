//! Every limit against a real Redis Cluster started here (three masters, three replicas):
//! exact per limit, names spread across the masters, scripts loaded on every master.

mod common;
mod local_cluster;

use std::time::{Duration, Instant};

use local_cluster::Cluster;
use tidewall::Rejected;
use tidewall::breaker::CircuitBreaker;
use tidewall::rt::Tokio;
use tidewall_redis::{BreakerQuorum, RedisBulkhead, RedisConn, RedisRateLimiter, WhenUnavailable};

async fn connect(cluster: &Cluster) -> RedisConn {
    RedisConn::cluster_builder(cluster.urls())
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_runs_on_a_cluster_and_names_spread_over_the_masters() {
    let cluster = Cluster::start();
    let conn = connect(&cluster).await;

    // Thirty limits of three cells a minute: each exact on its own, wherever its slot is.
    for i in 0..30 {
        let limiter =
            RedisRateLimiter::builder(&conn, &format!("api-{i}"), 3, Duration::from_secs(60))
                .deadline(Duration::from_secs(1))
                .when_unavailable(WhenUnavailable::Closed)
                .build()
                .unwrap();
        limiter.verify().await.unwrap();
        for _ in 0..3 {
            limiter.check().await.unwrap();
        }
        assert!(
            matches!(limiter.check().await, Err(Rejected::RateLimited { .. })),
            "api-{i}: a fourth cell"
        );
    }
    let spread = cluster.keys_per_master();
    assert_eq!(spread.len(), 3);
    assert!(
        spread.iter().all(|(_, keys)| *keys >= 3),
        "every master holds some of the thirty limits: {spread:?}"
    );

    // A bulkhead of two shared by three replicas, each on its own cluster connection.
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let conn = connect(&cluster).await;
        let bulkhead = RedisBulkhead::builder(&conn, "pool", 2)
            .deadline(Duration::from_secs(1))
            .when_unavailable(WhenUnavailable::Closed)
            .build()
            .unwrap();
        bulkhead.verify().await.unwrap();
        replicas.push(bulkhead);
    }
    let first = replicas[0].try_acquire().await.unwrap();
    let second = replicas[1].try_acquire().await.unwrap();
    assert_eq!(
        replicas[2].try_acquire().await.unwrap_err(),
        Rejected::BulkheadFull
    );
    drop(first);
    common::eventually(async || replicas[2].try_acquire().await.ok()).await;
    drop(second);

    // Two instances of a breaker quorum: one open is seen by the other.
    let breaker = || {
        CircuitBreaker::builder()
            .consecutive_failures(1)
            .break_duration(Duration::from_secs(60))
            .runtime(Tokio)
            .build()
            .unwrap()
    };
    let (open, closed) = (breaker(), breaker());
    open.try_acquire().unwrap().failure();
    let quorum_a = BreakerQuorum::builder(&conn, "dep", open)
        .instance("pod-a")
        .quorum(0.9)
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    let quorum_b = BreakerQuorum::builder(&conn, "dep", closed)
        .instance("pod-b")
        .quorum(0.9)
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    quorum_a.verify().await.unwrap();
    quorum_a.refresh().await.unwrap();
    let view = quorum_b.refresh().await.unwrap();
    assert_eq!((view.open, view.live), (1, 2));
}

/// A limiter of 200 cells a second, bursts of 10, failing closed.
fn hot_limiter(conn: &RedisConn, name: &str) -> RedisRateLimiter {
    RedisRateLimiter::builder(conn, name, 200, Duration::from_secs(1))
        .burst(10)
        .deadline(Duration::from_millis(200))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap()
}

/// GCRA from rest over `span`: the burst plus one cell per 5 ms interval, plus one.
fn most_admitted(span: Duration) -> usize {
    10 + usize::try_from(span.as_millis() / 5).unwrap() + 1
}

/// The topology changes while a limit is in use (`MOVED`: its master and replica swap): the
/// client follows, and nothing is lost (a manual failover lets the replica catch up first).
///
/// While the failover runs the old master holds writes back until its replica has caught
/// up, so a decision may wait out its deadline and be refused (failing closed). The limit
/// must be in reach before the failover starts and again once the cluster is healthy, and
/// over the whole run GCRA is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_moves_the_limit_and_loses_nothing() {
    let cluster = Cluster::start();
    let conn = connect(&cluster).await;
    let limiter = hot_limiter(&conn, "swapped");
    let master = cluster.master_of("{swapped:default}");
    let replica = cluster.replica_of(master);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let asking = tokio::spawn(common::ask_until(limiter, std::sync::Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failover_began = Instant::now();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.manual_failover(replica);
        cluster
    })
    .await
    .unwrap();
    let healthy = Instant::now();
    assert_eq!(cluster.master_of("{swapped:default}"), replica);
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = asking.await.unwrap();
    let ended = Instant::now();

    let admitted_between = |from: Instant, to: Instant| {
        outcomes
            .iter()
            .filter(|d| (from..to).contains(&d.at) && d.outcome.is_ok())
            .count()
    };
    let span = ended - started;
    let (admitted, most) = (admitted_between(started, ended), most_admitted(span));
    assert!(
        admitted <= most,
        "{admitted} admitted in {span:?}: GCRA allows {most}, so state was lost"
    );
    // Before and after the failover: one cell per 5 ms interval (less a fifth for the
    // scheduler and the round trips). After it, the client had to follow the new master.
    for (what, from, to) in [
        ("before the failover", started, failover_began),
        ("after the cluster was healthy again", healthy, ended),
    ] {
        let (got, steady) = (admitted_between(from, to), cells_in(to - from));
        assert!(
            got * 10 >= steady * 8,
            "{got} of {steady} admitted {what}: the limit was out of reach too long"
        );
    }
}

/// The cells a limit of one per 5 ms makes over `span`, leaving its burst aside.
fn cells_in(span: Duration) -> usize {
    usize::try_from(span.as_millis() / 5).unwrap()
}

/// A limit's slot migrated to another master while in use, one key at a time (`ASK` while
/// its keys are split between the two, `MOVED` after): every decision still comes from the
/// one state, so the rate stays exact and the bulkhead's leases all move with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_mid_run_keeps_every_limit_exact() {
    let cluster = Cluster::start();
    let conn = connect(&cluster).await;
    let name = "migrated";
    let limiter = hot_limiter(&conn, name);
    let bulkhead = RedisBulkhead::builder(&conn, name, 2)
        .deadline(Duration::from_millis(200))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    let held = [
        bulkhead.try_acquire().await.unwrap(),
        bulkhead.try_acquire().await.unwrap(),
    ];
    let tag = format!("{{{name}:default}}");
    let (slot, from) = (cluster.slot_of(&tag), cluster.master_of(&tag));
    let to = *cluster
        .masters()
        .iter()
        .find(|port| **port != from)
        .expect("another master");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = std::time::Instant::now();
    let asking = tokio::spawn(common::ask_until(
        limiter.clone(),
        std::sync::Arc::clone(&stop),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.move_slot(slot, from, to, || {
            std::thread::sleep(Duration::from_millis(150));
        });
        cluster
    })
    .await
    .unwrap();
    assert_eq!(cluster.master_of(&tag), to);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let outcomes = asking.await.unwrap();
    let span = started.elapsed();
    let admitted = outcomes.iter().filter(|d| d.outcome.is_ok()).count();
    let most = most_admitted(span);
    assert!(
        admitted <= most,
        "{admitted} admitted in {span:?}: GCRA allows {most}"
    );
    assert!(
        admitted * 10 >= most * 8,
        "{admitted} of {most}: the limit was out of reach too long"
    );

    // The two leases moved with the slot: still full, and freed by their release.
    assert_eq!(
        bulkhead.try_acquire().await.unwrap_err(),
        Rejected::BulkheadFull
    );
    drop(held);
    common::whole_limit_free(&bulkhead, 2).await;
}
