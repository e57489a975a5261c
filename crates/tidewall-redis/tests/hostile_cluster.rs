//! Black-box, adversarial tests of the Redis Cluster support, written from the public docs
//! only: partitions and odd names on a real cluster, the limits composed in a pipeline and
//! behind a tower layer with futures dropped at random points, connecting with nodes down or
//! through a replica only, failovers while bulkhead permits are held, two failovers in a row
//! on one slot, and a failover while the connection sits idle.

mod common;
mod local_cluster;

use std::collections::{BTreeSet, HashSet};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use local_cluster::Cluster;
use tidewall::breaker::CircuitBreaker;
use tidewall::pipeline::Pipeline;
use tidewall::rt::Tokio;
use tidewall::tower::{AdmitLayer, AdmitMode};
use tidewall::{Error, Rejected};
use tidewall_core::rng::SplitMix64;
use tidewall_redis::{
    BreakerQuorum, ConnectError, RedisBulkhead, RedisConn, RedisRateLimiter, WhenUnavailable,
};
use tower::{Service, ServiceExt};

/// A listener that never accepts: the kernel completes the handshake, nobody ever answers.
fn hung_node() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let url = format!(
        "redis://127.0.0.1:{}",
        listener.local_addr().expect("its address").port()
    );
    (listener, url)
}

fn admin(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("a client")
        .get_connection_with_timeout(Duration::from_secs(1))
        .expect("an admin connection")
}

/// `WAIT 1 2000` on the master on `port`: every write it acknowledged so far is on its
/// replica, so a kill right after loses nothing.
fn replicated(port: u16) {
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query(&mut admin(port))
        .expect("WAIT");
    assert!(acked >= 1, "the replica of {port} acknowledged every write");
}

async fn connect(cluster: &Cluster) -> RedisConn {
    RedisConn::cluster_builder(cluster.urls())
        .connect()
        .await
        .expect("a cluster connection")
}

fn rate(conn: &RedisConn, name: &str, partition: &str, count: u32) -> RedisRateLimiter {
    RedisRateLimiter::builder(conn, name, count, Duration::from_secs(60))
        .burst(count)
        .partition(partition)
        .deadline(Duration::from_secs(1))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .expect("a rate limiter")
}

fn bulkhead(conn: &RedisConn, name: &str, limit: u32, deadline: Duration) -> RedisBulkhead {
    RedisBulkhead::builder(conn, name, limit)
        .lease(Duration::from_secs(15))
        .deadline(deadline)
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .expect("a bulkhead")
}

fn breaker() -> CircuitBreaker<Tokio> {
    CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(60))
        .runtime(Tokio)
        .build()
        .expect("a breaker")
}

fn open_breaker() -> CircuitBreaker<Tokio> {
    let open = breaker();
    open.try_acquire().expect("a closed breaker").failure();
    open
}

fn quorum(
    conn: &RedisConn,
    name: &str,
    instance: &str,
    breaker: CircuitBreaker<Tokio>,
) -> BreakerQuorum {
    BreakerQuorum::builder(conn, name, breaker)
        .instance(instance)
        .quorum(0.9)
        .every(Duration::from_secs(4))
        .deadline(Duration::from_secs(1))
        .build()
        .expect("a quorum")
}

// ---------------------------------------------------------------- without a cluster

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_builder_with_no_node_or_a_garbage_url_is_invalid_settings() {
    let none = RedisConn::cluster_builder(Vec::<String>::new())
        .connect()
        .await;
    assert!(
        matches!(none, Err(ConnectError::InvalidSettings { .. })),
        "no node at all: {:?}",
        none.map(drop)
    );
    let dead = format!("redis://127.0.0.1:{}", common::closed_port());
    for nodes in [
        vec!["not a url".to_owned()],
        vec!["http://127.0.0.1:6379".to_owned()],
        vec!["redis://127.0.0.1:notaport".to_owned()],
        vec![String::new()],
        // A garbage URL beside a well-formed one: the settings are wrong whatever answers.
        vec![dead.clone(), "::::".to_owned()],
    ] {
        let started = Instant::now();
        let outcome = RedisConn::cluster_builder(nodes.clone()).connect().await;
        assert!(
            matches!(outcome, Err(ConnectError::InvalidSettings { .. })),
            "{nodes:?}: {:?}",
            outcome.map(drop)
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{nodes:?}: a settings error found at once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_connect_with_no_reachable_node_is_unreachable_within_the_timeout() {
    // Refused at once.
    let refused: Vec<String> = (0..3)
        .map(|_| format!("redis://127.0.0.1:{}", common::closed_port()))
        .collect();
    let started = Instant::now();
    let outcome = RedisConn::cluster_builder(refused)
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await;
    assert!(
        matches!(outcome, Err(ConnectError::Unreachable { .. })),
        "{:?}",
        outcome.map(drop)
    );
    assert!(started.elapsed() < Duration::from_secs(2), "refused nodes");

    // Three nodes that accept and never answer: the timeout is how long `connect` may take
    // (not how long per node).
    let hung: Vec<(TcpListener, String)> = (0..3).map(|_| hung_node()).collect();
    let timeout = Duration::from_millis(600);
    let started = Instant::now();
    let outcome = RedisConn::cluster_builder(hung.iter().map(|(_, url)| url.clone()))
        .connect_timeout(timeout)
        .connect()
        .await;
    let took = started.elapsed();
    assert!(
        matches!(outcome, Err(ConnectError::Unreachable { .. })),
        "{:?}",
        outcome.map(drop)
    );
    assert!(
        took <= timeout + Duration::from_millis(800),
        "connect took {took:?} with a {timeout:?} timeout"
    );
    drop(hung);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_names_and_partitions_never_share_a_key() {
    // Never connected: only the keys are compared.
    let conn = RedisConn::open("redis://127.0.0.1:1").expect("a lazy connection");
    let pairs = [("a:b", "c"), ("a", "b:c"), ("a:b:c", "default"), ("a", "b")];
    let keys: Vec<String> = pairs
        .iter()
        .map(|(name, partition)| rate(&conn, name, partition, 1).key().to_owned())
        .collect();
    let distinct: HashSet<&String> = keys.iter().collect();
    assert_eq!(
        distinct.len(),
        pairs.len(),
        "two different (name, partition) pairs share one rate limit's state: {keys:?}"
    );
}

// ---------------------------------------------------------------- on a real cluster

/// One name's many partitions spread over the slots and masters, each exact; names and
/// partitions with braces, colons, percent signs and glob characters keep every key of one
/// limit in one slot, and each limit works (verify, exact decisions, the quorum's
/// multi-key script).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_and_odd_names_keep_one_slot_and_stay_exact() {
    let cluster = Cluster::start();
    let conn = connect(&cluster).await;

    let mut slots = BTreeSet::new();
    let mut masters = BTreeSet::new();
    let limiters: Vec<RedisRateLimiter> = (0..32)
        .map(|p| rate(&conn, "tenants", &format!("t-{p}"), 2))
        .collect();
    for (p, limiter) in limiters.iter().enumerate() {
        limiter
            .check()
            .await
            .unwrap_or_else(|e| panic!("t-{p}: {e:?}"));
        limiter
            .check()
            .await
            .unwrap_or_else(|e| panic!("t-{p}: {e:?}"));
        slots.insert(cluster.slot_of(limiter.key()));
        masters.insert(cluster.master_of(limiter.key()));
    }
    for (p, limiter) in limiters.iter().enumerate() {
        assert!(
            matches!(limiter.check().await, Err(Rejected::RateLimited { .. })),
            "t-{p}: a third cell"
        );
    }
    assert!(slots.len() >= 16, "32 partitions on {} slots", slots.len());
    assert_eq!(masters.len(), 3, "partitions spread over every master");

    let odd = [
        ("}", "default"),
        ("{", "x"),
        ("}x{", "y"),
        ("a}b", "c{d"),
        ("{x}", "{y}"),
        ("50%", "%20"),
        ("a:b", "c:d"),
        ("name", "}"),
        ("name", "{}"),
        ("*?[", "\\"),
        ("tidewall:v1:{x", "default}:leases"),
    ];
    let mut failures = Vec::new();
    let mut accepted = 0;
    for (name, partition) in odd {
        let what = format!("name {name:?} partition {partition:?}");
        let limiter = RedisRateLimiter::builder(&conn, name, 1, Duration::from_secs(60))
            .partition(partition)
            .deadline(Duration::from_secs(1))
            .when_unavailable(WhenUnavailable::Closed)
            .build();
        let pool = RedisBulkhead::builder(&conn, name, 1)
            .partition(partition)
            .deadline(Duration::from_secs(1))
            .when_unavailable(WhenUnavailable::Closed)
            .build();
        // Refusing such a name at build is safe; accepting it means it must work.
        let (Ok(limiter), Ok(pool)) = (limiter, pool) else {
            continue;
        };
        accepted += 1;
        let started = Instant::now();
        if let Err(e) = limiter.verify().await {
            let (took, state) = (started.elapsed(), cluster.describe());
            failures.push(format!(
                "{what}: rate verify {e:?} after {took:?} ({state})"
            ));
        }
        let started = Instant::now();
        if let Err(e) = pool.verify().await {
            let (took, state) = (started.elapsed(), cluster.describe());
            failures.push(format!(
                "{what}: bulkhead verify {e:?} after {took:?} ({state})"
            ));
        }
        let first = limiter.check().await;
        let second = limiter.check().await;
        if first.is_err() || !matches!(second, Err(Rejected::RateLimited { .. })) {
            failures.push(format!("{what}: rate {first:?} then {second:?}"));
        }
        let held = pool.try_acquire().await;
        let next = pool.try_acquire().await.map(drop);
        if held.is_err() || next != Err(Rejected::BulkheadFull) {
            failures.push(format!(
                "{what}: bulkhead {:?} then {next:?}",
                held.map(drop)
            ));
        }
        let (rate_slot, pool_slot) = (cluster.slot_of(limiter.key()), cluster.slot_of(pool.key()));
        if rate_slot != pool_slot {
            failures.push(format!(
                "{what}: keys {:?} (slot {rate_slot}) and {:?} (slot {pool_slot}) apart",
                limiter.key(),
                pool.key()
            ));
        }
        let exists: i64 = redis::cmd("EXISTS")
            .arg(pool.key())
            .query(&mut admin(cluster.master_of(pool.key())))
            .expect("EXISTS");
        if exists != 1 {
            failures.push(format!("{what}: the leases are not on their slot's master"));
        }
        // The quorum's script touches several keys: a CROSSSLOT error if they were apart.
        let (Ok(a), Ok(b)) = (
            BreakerQuorum::builder(&conn, name, open_breaker())
                .instance("pod-a")
                .quorum(0.9)
                .deadline(Duration::from_secs(1))
                .build(),
            BreakerQuorum::builder(&conn, name, breaker())
                .instance("pod-b")
                .quorum(0.9)
                .deadline(Duration::from_secs(1))
                .build(),
        ) else {
            continue;
        };
        let started = Instant::now();
        if let Err(e) = a.verify().await {
            let (took, state) = (started.elapsed(), cluster.describe());
            failures.push(format!(
                "{what}: quorum verify {e:?} after {took:?} ({state})"
            ));
        }
        match (a.refresh().await, b.refresh().await) {
            (Ok(_), Ok(view)) if (view.open, view.live) == (1, 2) => {}
            (a, b) => failures.push(format!("{what}: quorum {a:?} / {b:?}")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(accepted > 0, "every odd name refused: nothing was tested");
}

/// The limits in a `Pipeline` and behind `AdmitLayer`s (both waiting modes), four callers on
/// separate cluster connections sharing one bulkhead of three, each call dropped at a
/// seeded random point: never more than three inside at once, and afterwards the whole
/// limit is free again (no lease leaked by a cancelled acquire).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_and_tower_calls_dropped_at_random_points_leak_no_lease() {
    const LIMIT: u32 = 3;
    const ROUNDS: usize = 60;
    let cluster = Cluster::start();
    let deadline = Duration::from_millis(500);
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));

    /// Counts a call inside the limit until dropped, wherever it is dropped.
    struct Inside(Arc<AtomicUsize>);
    impl Drop for Inside {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let op = {
        let (inside, most) = (Arc::clone(&inside), Arc::clone(&most));
        move |hold: Duration| {
            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            let guard = Inside(Arc::clone(&inside));
            async move {
                tokio::time::sleep(hold).await;
                drop(guard);
                Ok::<_, ()>(())
            }
        }
    };

    let mut workers = Vec::new();
    for worker in 0..2u64 {
        let conn = connect(&cluster).await;
        let pipeline = Pipeline::builder()
            .deadline(Duration::from_secs(2))
            .rate_limit(
                RedisRateLimiter::builder(&conn, "cancel", 10_000, Duration::from_secs(1))
                    .deadline(deadline)
                    .when_unavailable(WhenUnavailable::Closed)
                    .build()
                    .expect("a rate limiter"),
            )
            .bulkhead(bulkhead(&conn, "cancel", LIMIT, deadline))
            .build()
            .expect("a pipeline");
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(worker + 1);
            for _ in 0..ROUNDS {
                let hold = Duration::from_millis(rng.below_or_equal(14));
                let call = pipeline.call(|| op(hold));
                if rng.below_or_equal(3) == 0 {
                    let _ = call.await;
                } else {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(rng.below_or_equal(24)), call)
                            .await;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for (worker, mode) in [(3u64, AdmitMode::WaitCall), (4, AdmitMode::WaitReady)] {
        let conn = connect(&cluster).await;
        let layer = AdmitLayer::new(bulkhead(&conn, "cancel", LIMIT, deadline), mode)
            .max_wait(Duration::from_millis(300));
        let op = op.clone();
        let mut service = tower::ServiceBuilder::new()
            .layer(layer)
            .map_err(Error::Inner)
            .service_fn(move |hold: Duration| op(hold));
        workers.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(worker + 1);
            for _ in 0..ROUNDS {
                let hold = Duration::from_millis(rng.below_or_equal(14));
                let call = async {
                    let ready = service.ready().await?;
                    ready.call(hold).await
                };
                if rng.below_or_equal(3) == 0 {
                    let _ = call.await;
                } else {
                    let _ =
                        tokio::time::timeout(Duration::from_millis(rng.below_or_equal(24)), call)
                            .await;
                }
                tokio::task::yield_now().await;
            }
            drop(service);
        }));
    }
    for worker in workers {
        worker.await.expect("a worker");
    }
    assert_eq!(inside.load(Ordering::SeqCst), 0);
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= LIMIT as usize,
        "{most} calls inside a limit of {LIMIT}"
    );
    assert!(most >= 1, "some calls were admitted");

    let conn = connect(&cluster).await;
    common::whole_limit_free(&bulkhead(&conn, "cancel", LIMIT, deadline), LIMIT as usize).await;
}

/// Work that checks every limit on `conn`: nine names (so every master), each exact;
/// `verify` of all three limits.
async fn every_limit_works(conn: &RedisConn, cluster: &Cluster, prefix: &str) {
    let mut masters = BTreeSet::new();
    for i in 0..9 {
        let name = format!("{prefix}-{i}");
        let limiter = rate(conn, &name, "default", 2);
        limiter.verify().await.expect("rate verify");
        limiter.check().await.expect("a first cell");
        limiter.check().await.expect("a second cell");
        assert!(
            matches!(limiter.check().await, Err(Rejected::RateLimited { .. })),
            "{name}: a third cell"
        );
        masters.insert(cluster.master_of(limiter.key()));
    }
    assert!(masters.len() >= 2, "names spread: {masters:?}");
    let pool = bulkhead(conn, prefix, 1, Duration::from_secs(1));
    pool.verify().await.expect("bulkhead verify");
    let held = pool.try_acquire().await.expect("a permit");
    assert_eq!(
        pool.try_acquire().await.map(drop),
        Err(Rejected::BulkheadFull)
    );
    drop(held);
    let quorum = quorum(conn, prefix, "pod", breaker());
    quorum.verify().await.expect("quorum verify");
    let view = quorum.refresh().await.expect("a refresh");
    assert_eq!((view.open, view.live), (0, 1));
}

/// Connecting through a dead node first, through one replica only, and through a hung node
/// first: the client finds the masters, every limit works and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_nodes_down_or_through_a_replica_only() {
    let cluster = Cluster::start();
    let urls = cluster.urls();

    let dead = format!("redis://127.0.0.1:{}", common::closed_port());
    let conn = RedisConn::cluster_builder([dead, urls[0].clone()])
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .expect("one dead node of two given");
    every_limit_works(&conn, &cluster, "dead-first").await;

    let replica = cluster.replica_of(cluster.masters()[0]);
    let conn = RedisConn::cluster_builder([format!("redis://127.0.0.1:{replica}")])
        .connect()
        .await
        .expect("through a replica only");
    every_limit_works(&conn, &cluster, "via-replica").await;

    let (_hung, hung) = hung_node();
    let started = Instant::now();
    let conn = RedisConn::cluster_builder([hung, urls[1].clone()])
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await;
    let took = started.elapsed();
    let conn = conn.unwrap_or_else(|e| panic!("one hung node of two given: {e:?} after {took:?}"));
    assert!(took < Duration::from_secs(3), "connect took {took:?}");
    every_limit_works(&conn, &cluster, "hung-first").await;
}

/// Two permits held on one connection through a SIGKILLed master while two other
/// connections keep acquiring and releasing: every write was on the replica before the kill
/// (`WAIT`), so nothing can be lost and the limit is never overshot; every decision returns
/// within its deadline; afterwards only the two held leases are in Redis, and once they are
/// dropped the whole limit is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permits_held_through_a_killed_master_never_overshoot_and_nothing_leaks() {
    const LIMIT: u32 = 4;
    let deadline = Duration::from_millis(100);
    let mut cluster = Cluster::start();
    let name = "held";
    let holder = bulkhead(&connect(&cluster).await, name, LIMIT, deadline);
    let key = holder.key().to_owned();
    let master = cluster.master_of(&key);
    let inside = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let slowest_us = Arc::new(AtomicU64::new(0));
    let granted_after = Arc::new(AtomicUsize::new(0));
    let unavailable = Arc::new(AtomicUsize::new(0));
    let (pause, stop, killed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let parked = Arc::new(AtomicUsize::new(0));

    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(holder.try_acquire().await.expect("a permit"));
        inside.fetch_add(1, Ordering::SeqCst);
    }

    let mut workers = Vec::new();
    for worker in 0..2u64 {
        let pool = bulkhead(&connect(&cluster).await, name, LIMIT, deadline);
        let (inside, most, slowest_us, granted_after, unavailable) = (
            Arc::clone(&inside),
            Arc::clone(&most),
            Arc::clone(&slowest_us),
            Arc::clone(&granted_after),
            Arc::clone(&unavailable),
        );
        let (pause, stop, killed, parked) = (
            Arc::clone(&pause),
            Arc::clone(&stop),
            Arc::clone(&killed),
            Arc::clone(&parked),
        );
        workers.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(100 + worker);
            let mut is_parked = false;
            while !stop.load(Ordering::SeqCst) {
                if pause.load(Ordering::SeqCst) {
                    if !is_parked {
                        is_parked = true;
                        parked.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                if is_parked {
                    is_parked = false;
                    parked.fetch_sub(1, Ordering::SeqCst);
                }
                let at = Instant::now();
                let outcome = pool.try_acquire().await;
                let took = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                slowest_us.fetch_max(took, Ordering::SeqCst);
                match outcome {
                    Ok(permit) => {
                        let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        if killed.load(Ordering::SeqCst) {
                            granted_after.fetch_add(1, Ordering::SeqCst);
                        }
                        tokio::time::sleep(Duration::from_millis(2 + rng.below_or_equal(17))).await;
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                    }
                    Err(Rejected::BackendUnavailable) => {
                        unavailable.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                    }
                    Err(_) => tokio::task::yield_now().await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Quiesce: both workers parked, their releases sent, everything on the replica; kill.
    pause.store(true, Ordering::SeqCst);
    common::eventually(async || (parked.load(Ordering::SeqCst) == 2).then_some(())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cluster = tokio::task::spawn_blocking(move || {
        replicated(master);
        cluster.kill(master);
        cluster
    })
    .await
    .expect("the kill");
    killed.store(true, Ordering::SeqCst);
    pause.store(false, Ordering::SeqCst);
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.wait_until_healthy();
        cluster
    })
    .await
    .expect("the failover");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.expect("a worker");
    }

    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= LIMIT as usize,
        "{most} permits held at once with a limit of {LIMIT}, nothing lost (WAIT before the kill)"
    );
    let slowest = Duration::from_micros(slowest_us.load(Ordering::SeqCst));
    assert!(
        slowest <= deadline + Duration::from_millis(250),
        "an acquire took {slowest:?} with a {deadline:?} deadline"
    );
    assert!(
        unavailable.load(Ordering::SeqCst) > 0,
        "the failover was seen"
    );
    assert!(
        granted_after.load(Ordering::SeqCst) > 0,
        "permits granted again after the failover"
    );

    // Only the two held leases remain on the promoted master: no acquire cut short by the
    // outage left one behind.
    let new_master = cluster.master_of(&key);
    assert_ne!(new_master, master);
    let count = common::eventually(async || {
        let count: u64 = redis::cmd("ZCARD")
            .arg(&key)
            .query(&mut admin(new_master))
            .expect("ZCARD");
        (count == 2).then_some(count)
    })
    .await;
    assert_eq!(count, 2);
    assert!(
        holder.try_acquire().await.is_ok(),
        "a third permit beside the two held"
    );
    drop(held);
    common::whole_limit_free(
        &bulkhead(
            &connect(&cluster).await,
            name,
            LIMIT,
            Duration::from_secs(1),
        ),
        LIMIT as usize,
    )
    .await;
}

/// Two failovers in a row on one slot: a manual one (the replica takes over), then the new
/// master SIGKILLed (the old master, now its replica, takes back over). Decisions come
/// within their deadline throughout, the limit is exact after, the held leases survive both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_failovers_in_a_row_on_one_slot() {
    const DEADLINE: Duration = Duration::from_millis(50);
    let cluster = Cluster::start();
    let conn = connect(&cluster).await;
    let name = "twice";
    let limiter = RedisRateLimiter::builder(&conn, name, 200, Duration::from_secs(1))
        .burst(10)
        .deadline(DEADLINE)
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .expect("a rate limiter");
    let pool = bulkhead(&conn, name, 2, Duration::from_secs(1));
    let held = [
        pool.try_acquire().await.expect("a permit"),
        pool.try_acquire().await.expect("a permit"),
    ];
    let key = limiter.key().to_owned();
    let first_master = cluster.master_of(&key);
    let stop = Arc::new(AtomicBool::new(false));
    let asking = tokio::spawn(common::ask_until(limiter.clone(), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut cluster, second_master) = tokio::task::spawn_blocking(move || {
        let replica = cluster.replica_of(first_master);
        cluster.manual_failover(replica);
        (cluster, replica)
    })
    .await
    .expect("the manual failover");
    assert_eq!(cluster.master_of(&key), second_master);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = Instant::now();
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.kill(second_master);
        cluster.wait_until_healthy();
        cluster
    })
    .await
    .expect("the second failover");
    let healed = Instant::now();
    assert_eq!(
        cluster.master_of(&key),
        first_master,
        "the old master took back over"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let decisions = asking.await.expect("the asker");
    let ended = Instant::now();

    let slowest = decisions.iter().map(|d| d.took).max().expect("decisions");
    assert!(
        slowest <= DEADLINE + Duration::from_millis(250),
        "a decision took {slowest:?} with a {DEADLINE:?} deadline"
    );
    let after: Vec<&common::Decision> = decisions
        .iter()
        .filter(|d| d.at > killed && d.outcome.is_ok())
        .collect();
    let first = after
        .first()
        .expect("admitted after the second failover")
        .at;
    assert!(
        first < healed + Duration::from_secs(1),
        "the client found the twice-moved master"
    );
    let span = ended - first;
    let most = 10 + usize::try_from(span.as_millis() / 5).expect("a span") + 1;
    assert!(
        after.len() <= most,
        "{} admitted in {span:?}: GCRA allows {most}",
        after.len()
    );
    assert!(
        after.len() * 10 >= most * 7,
        "{} of {most}: out of reach too long",
        after.len()
    );

    // The leases were granted long before both failovers: still held.
    assert_eq!(
        pool.try_acquire().await.map(drop),
        Err(Rejected::BulkheadFull)
    );
    drop(held);
    common::whole_limit_free(&pool, 2).await;
}

/// The connection used, then idle for seconds while one name's master is failed over by
/// hand and another name's master is SIGKILLed (after its replica caught up): the first
/// decisions after the gap are exact, not the failure policy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failovers_while_idle_then_the_first_decisions_are_exact() {
    let cluster = Cluster::start();
    let conn = connect(&cluster).await;
    // Two names on two different masters.
    let mut names: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        let name = format!("idle-{i}");
        let master = cluster.master_of(rate(&conn, &name, "default", 3).key());
        if names.iter().all(|(_, m)| *m != master) {
            names.push((name, master));
        }
        if names.len() == 2 {
            break;
        }
    }
    let mut limits = Vec::new();
    for (name, _) in &names {
        let limiter = rate(&conn, name, "default", 3);
        limiter.check().await.expect("a first cell");
        limiter.check().await.expect("a second cell");
        let pool = bulkhead(&conn, name, 2, Duration::from_secs(1));
        let held = pool.try_acquire().await.expect("a permit");
        let a = quorum(&conn, name, "pod-a", open_breaker());
        let b = quorum(&conn, name, "pod-b", breaker());
        a.refresh().await.expect("pod-a reports");
        limits.push((name.clone(), limiter, pool, held, a, b));
    }

    let (manual, killed) = (names[0].1, names[1].1);
    let cluster = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        std::thread::sleep(Duration::from_secs(1));
        cluster.manual_failover(cluster.replica_of(manual));
        replicated(killed);
        cluster.kill(killed);
        cluster.wait_until_healthy();
        std::thread::sleep(Duration::from_secs(1));
        cluster
    })
    .await
    .expect("the idle gap");
    assert_ne!(cluster.master_of(limits[0].1.key()), manual);
    assert_ne!(cluster.master_of(limits[1].1.key()), killed);

    let mut failures = Vec::new();
    for (name, limiter, pool, _held, _a, b) in &limits {
        let third = limiter.check().await;
        let fourth = limiter.check().await;
        if third.is_err() || !matches!(fourth, Err(Rejected::RateLimited { .. })) {
            failures.push(format!("{name}: rate {third:?} then {fourth:?}"));
        }
        let second = pool.try_acquire().await;
        let over = pool.try_acquire().await.map(drop);
        if second.is_err() || over != Err(Rejected::BulkheadFull) {
            failures.push(format!(
                "{name}: bulkhead {:?} then {over:?}",
                second.map(drop)
            ));
        }
        match b.refresh().await {
            Ok(view) if (view.open, view.live) == (1, 2) => {}
            other => failures.push(format!("{name}: quorum {other:?}")),
        }
        if let Err(e) = limiter.verify().await {
            failures.push(format!("{name}: rate verify {e:?}"));
        }
        if let Err(e) = pool.verify().await {
            failures.push(format!("{name}: bulkhead verify {e:?}"));
        }
        if let Err(e) = b.verify().await {
            failures.push(format!("{name}: quorum verify {e:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    drop(cluster);
}
