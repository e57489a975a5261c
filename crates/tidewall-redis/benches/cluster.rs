//! Redis Cluster against one server, in the same run, and what a failover loses.
//!
//! 1. Decisions per second of the rate limiter with 64 tasks, each on a limit of its own name
//!    (so on its own slot), through one `RedisConn`: against one `redis-server`, then against
//!    a local cluster of three masters and three replicas; and the cluster with every task on
//!    one name (one slot, so one master) for contrast.
//! 2. Failovers: a bulkhead whose leases are taken as fast as one task can (each granted
//!    lease is a write the master acknowledged) while the master of its slot is killed
//!    (SIGKILL); once the replica serves the slot, the leases it has are counted. Those
//!    missing were acknowledged by the dead master but never reached its replica: what a
//!    failover loses. Also how long the cluster took to heal and the client to decide again.
//!
//! Run: `cargo bench -p tidewall-redis --bench cluster` (needs `redis-server` and
//! `redis-cli`; `scripts/ensure-redis` installs both). A plain `main`, not criterion: the
//! figures are rates and counts over runs, not the time of one call.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/local_cluster/mod.rs"]
mod local_cluster;

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::RedisServer;
use local_cluster::Cluster;
use tidewall_redis::{RedisBulkhead, RedisConn, RedisRateLimiter, WhenUnavailable};

const SPAN: Duration = Duration::from_secs(3);
const TASKS: usize = 64;
const FAILOVERS: usize = 3;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "Rate limiter decisions/s, {TASKS} tasks on one connection, {} s per row",
        SPAN.as_secs()
    );
    let server = RedisServer::start();
    let single = runtime.block_on(async {
        let conn = RedisConn::builder(server.url())
            .connect()
            .await
            .expect("a connection");
        decisions(&conn, TASKS).await
    });
    drop(server);
    let _ = writeln!(out, "  one server, {TASKS} names:        {single:>9.0}");
    let cluster = Cluster::start();
    let (spread, one_slot) = runtime.block_on(async {
        let conn = RedisConn::cluster_builder(cluster.urls())
            .connect()
            .await
            .expect("a cluster connection");
        (decisions(&conn, TASKS).await, decisions(&conn, 1).await)
    });
    let _ = writeln!(out, "  cluster (3 masters), {TASKS} names: {spread:>9.0}");
    let _ = writeln!(out, "  cluster (3 masters), 1 name:   {one_slot:>9.0}");
    let mut per_master = std::collections::BTreeMap::new();
    for i in 0..TASKS {
        let tag = format!("{{{}-{i}:default}}", run_name());
        *per_master.entry(cluster.master_of(&tag)).or_insert(0) += 1;
    }
    let names: Vec<_> = per_master.values().collect();
    let _ = writeln!(out, "  the {TASKS} names' slots per master: {names:?}");
    drop(cluster);

    let _ = writeln!(
        out,
        "\nFailovers: leases granted by the master then found on its promoted replica"
    );
    for run in 1..=FAILOVERS {
        let report = runtime.block_on(failover());
        let _ = writeln!(out, "  run {run}: {report}");
    }
}

/// The prefix of this run's limit names.
fn run_name() -> String {
    format!("bench-{}", std::process::id())
}

/// Decisions a second with [`TASKS`] tasks over `names` limit names (round robin).
async fn decisions(conn: &RedisConn, names: usize) -> f64 {
    let run = run_name();
    let limiters: Vec<_> = (0..names)
        .map(|i| {
            // A limit no run reaches: every decision is the same full round trip.
            RedisRateLimiter::builder(
                conn,
                &format!("{run}-{i}"),
                1_000_000,
                Duration::from_secs(1),
            )
            .deadline(Duration::from_secs(1))
            .build()
            .expect("a limiter")
        })
        .collect();
    for limiter in &limiters {
        limiter.check().await.expect("admitted"); // warm: scripts loaded, slots known
    }
    let started = Instant::now();
    let stop = started + SPAN;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let limiter = limiters[task % names].clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < stop {
                    limiter.check().await.expect("admitted");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("a task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// One failover under a stream of lease grants; what was lost and how long it took.
async fn failover() -> String {
    let mut cluster = Cluster::start();
    let conn = RedisConn::cluster_builder(cluster.urls())
        .connect()
        .await
        .expect("a cluster connection");
    let name = "leases";
    let bulkhead = RedisBulkhead::builder(&conn, name, 1_000_000)
        .lease(Duration::from_secs(600))
        .deadline(Duration::from_millis(50))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .expect("a bulkhead");
    let master = cluster.master_of(&format!("{{{name}:default}}"));
    let stop = Arc::new(AtomicBool::new(false));
    let taking = tokio::spawn({
        let (bulkhead, stop) = (bulkhead.clone(), Arc::clone(&stop));
        async move {
            let (mut before, mut after) = (Vec::new(), Vec::new());
            let mut first_after_kill: Option<Instant> = None;
            let mut killed_at: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                match bulkhead.try_acquire().await {
                    Ok(permit) if killed_at.is_none() => before.push(permit),
                    // Granted by the promoted replica: held too, so it is counted there.
                    Ok(permit) => {
                        first_after_kill.get_or_insert_with(Instant::now);
                        after.push(permit);
                    }
                    Err(_) => {
                        killed_at.get_or_insert_with(Instant::now);
                        tokio::task::yield_now().await;
                    }
                }
            }
            (before, after, first_after_kill)
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    cluster.kill(master);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_until_healthy();
        cluster
    })
    .await
    .expect("healed");
    let healed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (before, after, first_after_kill) = taking.await.expect("the task");
    let promoted = cluster.master_of(&format!("{{{name}:default}}"));
    let key = format!("tidewall:v1:{{{name}:default}}:bulkhead");
    let present: usize = redis::Client::open(format!("redis://127.0.0.1:{promoted}"))
        .and_then(|client| client.get_connection())
        .and_then(|mut c| redis::cmd("ZCARD").arg(&key).query(&mut c))
        .expect("ZCARD on the promoted replica");
    let granted = before.len();
    let found = present.saturating_sub(after.len());
    // Not released: the counts above stand (the cluster is stopped with them held).
    std::mem::forget((before, after));
    format!(
        "{granted} leases granted before the kill, {} missing on the promoted replica; healed {:.2} s after the kill, decisions again {:.2} s after",
        granted.saturating_sub(found),
        (healed - killed).as_secs_f64(),
        first_after_kill.map_or(f64::NAN, |at| at
            .saturating_duration_since(killed)
            .as_secs_f64()),
    )
}
