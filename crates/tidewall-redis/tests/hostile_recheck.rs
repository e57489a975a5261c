//! Black-box, adversarial tests of `RedisRateLimiter::DENIAL_RECHECK`, written from the public
//! docs only: a remembered denial is answered locally (no round trip) until it expires or
//! for at most the recheck, then Redis is asked again, so cells a lease-mode replica gives
//! back reach every refused replica (exact and leased) within it; the recheck never admits
//! more than GCRA allows; `retry_after` stays the whole wait; a denial is forgotten when the
//! instance admits a cell, and a request for fewer cells is not refused by a larger one's
//! denial.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{RedisServer, eventually, limiter_per};
use tidewall::Rejected;
use tidewall_redis::RedisRateLimiter;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const RECHECK: Duration = RedisRateLimiter::DENIAL_RECHECK;
/// Generous: given-back cells reach a refused replica within the recheck, plus this.
const SLACK: Duration = Duration::from_secs(2);

/// `burst` cells, then one an hour: no cell frees during a test, so counts are exact.
fn hourly(server: &RedisServer, name: &str, burst: u32, lease: Option<u32>) -> RedisRateLimiter {
    limiter_per(server, name, 1, HOUR, burst, lease)
}

/// Admits as many cells as `limiter` gives, one after another, until refused.
async fn drain(limiter: &RedisRateLimiter) -> u64 {
    let mut admitted = 0;
    loop {
        match limiter.check().await {
            Ok(()) => admitted += 1,
            Err(Rejected::RateLimited { .. }) => return admitted,
            Err(other) => panic!("only rate limited: {other:?}"),
        }
    }
}

/// The wait a refusal reports.
async fn refused_wait(limiter: &RedisRateLimiter, what: &str) -> Duration {
    match limiter.check().await {
        Err(Rejected::RateLimited { retry_after }) => retry_after,
        other => panic!("{what}: refused as rate limited, got {other:?}"),
    }
}

/// A lease-mode holder that spent `spent` cells and holds some it did not spend.
async fn holder(server: &RedisServer, name: &str, burst: u32, spent: u32) -> RedisRateLimiter {
    let holder = hourly(server, name, burst, Some(64));
    for _ in 0..spent {
        holder.check().await.unwrap();
    }
    // The next batch may be on its way in the background: let it land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    holder
}

/// Three replicas refused (two exact, one leased) all ask Redis again within the recheck:
/// together they take exactly the cells given back, no more, within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_refused_replicas_share_the_given_back_cells_within_the_recheck() {
    const BURST: u32 = 100;
    let server = RedisServer::start();
    let holder = holder(&server, "shared", BURST, 40).await;
    let replicas = [
        hourly(&server, "shared", BURST, None),
        hourly(&server, "shared", BURST, None),
        hourly(&server, "shared", BURST, Some(8)),
    ];
    let mut before = 0;
    for (i, replica) in replicas.iter().enumerate() {
        before += drain(replica).await;
        let wait = refused_wait(replica, &format!("replica {i}")).await;
        assert!(wait > MINUTE, "replica {i}: the whole wait, {wait:?}");
    }
    let given = holder.return_unspent().await.unwrap();
    assert!(given > 0, "the holder held cells");
    assert_eq!(
        40 + before + given,
        u64::from(BURST),
        "every cell accounted"
    );
    let returned = Instant::now();
    let mut after = [0_u64; 3];
    eventually(async || {
        for (i, replica) in replicas.iter().enumerate() {
            after[i] += drain(replica).await;
        }
        (after.iter().sum::<u64>() >= given).then_some(())
    })
    .await;
    let took = returned.elapsed();
    assert!(
        took < RECHECK + SLACK,
        "given-back cells reached the refused replicas after {took:?}"
    );
    // Past another recheck: nobody admits more.
    tokio::time::sleep(RECHECK + Duration::from_millis(200)).await;
    for replica in &replicas {
        assert_eq!(drain(replica).await, 0, "{after:?}: nothing more");
    }
    assert_eq!(
        after.iter().sum::<u64>(),
        given,
        "each cell given back once"
    );
    let fresh = hourly(&server, "shared", BURST, None);
    assert_eq!(drain(&fresh).await, 0, "nothing left");
}

/// Asking Redis again after the recheck never admits more than GCRA allows: two exact and
/// one leased replica hammering a drained limit across several rechecks admit nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rechecks_never_admit_more_than_the_limit() {
    const BURST: u32 = 12;
    let server = RedisServer::start();
    let replicas = [
        hourly(&server, "strict", BURST, None),
        hourly(&server, "strict", BURST, None),
        hourly(&server, "strict", BURST, Some(4)),
    ];
    let mut total = 0;
    for replica in &replicas {
        total += drain(replica).await;
    }
    assert_eq!(total, u64::from(BURST), "the burst, exactly");
    let stop = Arc::new(AtomicBool::new(false));
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for replica in replicas.clone() {
        let (stop, admitted) = (Arc::clone(&stop), Arc::clone(&admitted));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match replica.check().await {
                    Ok(()) => {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(Rejected::RateLimited { retry_after }) => {
                        assert!(retry_after > MINUTE, "the whole wait: {retry_after:?}");
                    }
                    Err(other) => panic!("{other:?}"),
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    // Across at least two rechecks.
    tokio::time::sleep(RECHECK * 2 + Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        admitted.load(Ordering::SeqCst),
        0,
        "admitted after the burst"
    );
    assert_eq!(drain(&hourly(&server, "strict", BURST, None)).await, 0);
}

/// After the recheck has asked Redis again, a refusal still reports the whole wait Redis gave
/// (about an hour), not the recheck's second; in exact and lease mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_past_the_recheck_is_still_the_whole_wait() {
    let server = RedisServer::start();
    for (name, lease) in [("whole-exact", None), ("whole-leased", Some(4))] {
        let limiter = hourly(&server, name, 3, lease);
        assert_eq!(drain(&limiter).await, 3, "{name}");
        let first = refused_wait(&limiter, name).await;
        assert!(first > HOUR - MINUTE && first <= HOUR, "{name}: {first:?}");
        for round in 0..2 {
            tokio::time::sleep(RECHECK + Duration::from_millis(200)).await;
            for _ in 0..3 {
                let wait = refused_wait(&limiter, name).await;
                assert!(
                    wait > HOUR - MINUTE && wait <= HOUR,
                    "{name}, round {round}: the whole wait, {wait:?}"
                );
                assert!(
                    wait <= first,
                    "{name}: the wait grew, {first:?} then {wait:?}"
                );
            }
        }
    }
}

/// Repeated denials within the recheck cost no round trip, in exact and lease mode: at most
/// one round trip per recheck elapsed since the denial (0 on a normal host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hammering_a_refused_replica_costs_no_round_trip_within_the_recheck() {
    let server = RedisServer::start();
    for (name, lease) in [("quiet-exact", None), ("quiet-leased", Some(4))] {
        let limiter = hourly(&server, name, 5, lease);
        // Timed from before the refusal that is remembered, so `spent` never undercounts
        // the rechecks that have come due.
        let denied = Instant::now();
        assert_eq!(drain(&limiter).await, 5, "{name}");
        let before = server.calls("evalsha");
        for _ in 0..2_000 {
            let _ = refused_wait(&limiter, name).await;
        }
        for _ in 0..200 {
            assert!(
                matches!(limiter.check_n(1).await, Err(Rejected::RateLimited { .. })),
                "{name}"
            );
        }
        let spent = denied.elapsed();
        let round_trips = server.calls("evalsha") - before;
        let rechecks = u64::try_from(spent.as_millis() / RECHECK.as_millis()).unwrap();
        assert!(
            round_trips <= rechecks,
            "{name}: {round_trips} round trips for 2 200 refusals in {spent:?}"
        );
    }
}

/// A denial remembered for a larger request does not refuse a smaller one that Redis would
/// admit ("a request for fewer might pass sooner"); a larger one while denied is refused;
/// more than the burst is `InsufficientCapacity` whatever is remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_n_of_other_sizes_while_a_denial_is_remembered() {
    const BURST: u32 = 10;
    let server = RedisServer::start();
    let limiter = hourly(&server, "sizes", BURST, None);
    limiter.check_n(7).await.unwrap();
    let Err(Rejected::RateLimited { retry_after }) = limiter.check_n(4).await else {
        panic!("4 cells of 3 left: refused");
    };
    assert!(retry_after > MINUTE, "{retry_after:?}");
    assert_eq!(
        limiter.check_n(BURST + 1).await,
        Err(Rejected::InsufficientCapacity { burst: BURST }),
        "more than the burst, while a denial is remembered"
    );
    assert!(
        matches!(limiter.check_n(5).await, Err(Rejected::RateLimited { .. })),
        "more than the denied request"
    );
    assert_eq!(
        limiter.check_n(3).await,
        Ok(()),
        "3 cells are free: the denial of 4 must not refuse them"
    );
    assert!(matches!(
        limiter.check_n(1).await,
        Err(Rejected::RateLimited { .. })
    ));
    assert_eq!(drain(&hourly(&server, "sizes", BURST, None)).await, 0);
}

/// A denial is forgotten when the instance admits a cell: once it admitted a smaller
/// request after being refused, cells given back meanwhile are admitted at once, not after
/// the recheck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_forgets_the_denial() {
    const BURST: u32 = 200;
    let server = RedisServer::start();
    let first = holder(&server, "forget", BURST, 40).await;
    let second = holder(&server, "forget", BURST, 40).await;
    let other = hourly(&server, "forget", BURST, None);
    let drained = drain(&other).await;
    let given = first.return_unspent().await.unwrap();
    assert!(given > 0);
    let limiter = hourly(&server, "forget", BURST, None);
    let ask = u32::try_from(given).unwrap();
    assert!(
        matches!(
            limiter.check_n(ask + 1).await,
            Err(Rejected::RateLimited { .. })
        ),
        "{} free, {} asked",
        given,
        ask + 1
    );
    assert_eq!(limiter.check_n(ask).await, Ok(()), "{ask} free: admitted");
    let again = second.return_unspent().await.unwrap();
    assert!(again > 0);
    // The admission forgot the denial: this asks Redis, whenever it runs.
    let answer = limiter.check().await;
    assert_eq!(
        answer,
        Ok(()),
        "{again} cells given back and the denial forgotten by the admission"
    );
    let rest = drain(&limiter).await + 1;
    assert_eq!(
        80 + drained + given + rest,
        u64::from(BURST),
        "every cell once"
    );
}

/// `return_unspent` racing refused replicas that keep checking: every cell given back is
/// admitted exactly once, within the recheck, and the totals stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_unspent_racing_refused_replicas() {
    const BURST: u32 = 200;
    let server = RedisServer::start();
    let holder = holder(&server, "race", BURST, 50).await;
    let replicas = [
        hourly(&server, "race", BURST, None),
        hourly(&server, "race", BURST, Some(8)),
        hourly(&server, "race", BURST, None),
    ];
    let mut before = 0;
    for replica in &replicas {
        before += drain(replica).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for replica in replicas.clone() {
        for _ in 0..2 {
            let (replica, stop, admitted) =
                (replica.clone(), Arc::clone(&stop), Arc::clone(&admitted));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match replica.check().await {
                        Ok(()) => {
                            admitted.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(Rejected::RateLimited { .. }) => {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(other) => panic!("{other:?}"),
                    }
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let given = holder.return_unspent().await.unwrap();
    assert!(given > 0, "the holder held cells");
    let returned = Instant::now();
    eventually(async || (admitted.load(Ordering::SeqCst) >= given).then_some(())).await;
    let took = returned.elapsed();
    // Past another recheck, still checking: nothing more.
    tokio::time::sleep(RECHECK + Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    // A leased replica may still hold cells it took: spend them, then nothing.
    let mut held = 0;
    for replica in &replicas {
        held += drain(replica).await;
    }
    assert_eq!(
        admitted.load(Ordering::SeqCst) + held,
        given,
        "each given-back cell admitted once"
    );
    assert!(took < RECHECK + SLACK, "reached the refused after {took:?}");
    assert_eq!(50 + before + given, u64::from(BURST));
    assert_eq!(drain(&hourly(&server, "race", BURST, None)).await, 0);
}

/// Dropping a lease replica's handle gives nothing back while a clone lives; dropping the
/// last one does, and a replica refused before reaches those cells within the recheck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_lease_handle_while_another_replica_is_refused() {
    const BURST: u32 = 100;
    let server = RedisServer::start();
    let holder = holder(&server, "dropped", BURST, 40).await;
    let clone = holder.clone();
    let refused = hourly(&server, "dropped", BURST, Some(8));
    let before = drain(&refused).await;
    assert!(before < 60, "the holder holds some: {before}");
    drop(holder);
    // A clone lives: nothing given back, even past a recheck.
    tokio::time::sleep(RECHECK + Duration::from_millis(300)).await;
    assert_eq!(drain(&refused).await, 0, "given back while a clone lived");
    drop(clone);
    let dropped = Instant::now();
    let mut after = 0;
    eventually(async || {
        after += drain(&refused).await;
        (40 + before + after == u64::from(BURST)).then_some(())
    })
    .await;
    let took = dropped.elapsed();
    assert!(
        took < RECHECK + SLACK,
        "cells given back on drop reached the refused replica after {took:?}"
    );
    tokio::time::sleep(RECHECK + Duration::from_millis(200)).await;
    assert_eq!(drain(&refused).await, 0, "given back once");
    assert_eq!(drain(&hourly(&server, "dropped", BURST, None)).await, 0);
}
