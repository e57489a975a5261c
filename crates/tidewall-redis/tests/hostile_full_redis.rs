//! Black-box, adversarial tests written from the public docs only, for the **Memory** bullet
//! of the crate docs: on a full Redis (`maxmemory` reached under `noeviction`) "a full Redis
//! then answers `OOM`, and the failure policy decides: a bulkhead's acquire too, as its lease
//! is its first write [...] A held lease's renewal is refused alike, and tried again (see
//! `RedisBulkhead`); its release is not refused." Composed as users compose the bulkhead:
//! alone, in a pipeline, behind an `AdmitLayer` in every mode, with held leases when Redis
//! fills up, holders dropped at random (seeded) points. No metrics recorder here (see
//! `hostile_refusal_metrics.rs`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{RedisServer, eventually, whole_limit_free};
use tidewall::pipeline::Pipeline;
use tidewall::rt::Tokio;
use tidewall::tower::{AdmitLayer, AdmitMode};
use tidewall::{Deadline, Error, Rejected};
use tidewall_core::rng::SplitMix64;
use tidewall_redis::{RedisBulkhead, RedisConn, WhenUnavailable};
use tower::{Service as _, ServiceExt as _};

fn is_full(server: &RedisServer) -> bool {
    let written: redis::RedisResult<()> = redis::cmd("SET")
        .arg("s49-probe-write")
        .arg(1)
        .query(&mut server.admin().unwrap());
    written.is_err_and(|e| e.to_string().to_ascii_uppercase().contains("OOM"))
}

fn bulkhead(
    conn: &RedisConn,
    name: &str,
    limit: u32,
    lease: Duration,
    policy: WhenUnavailable,
) -> RedisBulkhead {
    RedisBulkhead::builder(conn, name, limit)
        .lease(lease)
        .deadline(Duration::from_secs(1))
        .when_unavailable(policy)
        .build()
        .unwrap()
}

/// Polls `bulkhead` every 100 ms until `until`, asserting it stays full (answered by Redis).
async fn stays_full_until(bulkhead: &RedisBulkhead, until: Instant, why: &str) {
    while Instant::now() < until {
        assert_eq!(
            bulkhead.try_acquire().await.map(drop),
            Err(Rejected::BulkheadFull),
            "{why}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// "A held lease's renewal is refused alike, and tried again": Redis is full across the
/// renewals due at one and two thirds of a 3 s lease, and has room again 0.7 s before the
/// lease would run out. The renewal tried again then keeps the lease: nobody else gets the
/// slot for well past the lease's first term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lease_outlives_a_full_redis_shorter_than_the_lease() {
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    let lease = Duration::from_secs(3);
    let holder = bulkhead(&conn, "s49-renew", 1, lease, WhenUnavailable::Closed);
    let other = bulkhead(&conn, "s49-renew", 1, lease, WhenUnavailable::Closed);
    let start = Instant::now();
    let permit = holder.try_acquire().await.unwrap();
    assert!(permit.is_shared());
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.fill_up();
    assert!(is_full(&server));
    // Meanwhile the slot is not given (the limit is reached, and no lease can be written).
    let meanwhile = other.try_acquire().await.map(drop);
    assert!(
        matches!(
            meanwhile,
            Err(Rejected::BulkheadFull | Rejected::BackendUnavailable)
        ),
        "{meanwhile:?}"
    );
    tokio::time::sleep(
        (start + Duration::from_millis(2300)).saturating_duration_since(Instant::now()),
    )
    .await;
    server.make_room();
    // Past the lease's first term (3 s), and past a renewal on the regular schedule.
    stays_full_until(
        &other,
        start + Duration::from_millis(4500),
        "the held lease lapsed: its renewal refused while Redis was full was not tried again",
    )
    .await;
    drop(permit);
    whole_limit_free(&other, 1).await;
}

/// "Its release is not refused": leases dropped while Redis is full are gone from Redis
/// while it is still full, in the background; the slots are free once it has room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_on_a_full_redis_free_their_slots() {
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    let bh = bulkhead(
        &conn,
        "s49:release{x}",
        3,
        Duration::from_secs(30),
        WhenUnavailable::Closed,
    );
    let permits = vec![
        bh.try_acquire().await.unwrap(),
        bh.try_acquire().await.unwrap(),
        bh.try_acquire().await.unwrap(),
    ];
    assert_eq!(server.zcard(bh.key()), 3);
    server.fill_up();
    drop(permits);
    server.until_no_lease(bh.key()).await;
    assert!(is_full(&server), "released only once Redis had room");
    // Still full: acquires are refused by the failure policy, not admitted past the limit.
    assert_eq!(
        bh.try_acquire().await.map(drop),
        Err(Rejected::BackendUnavailable)
    );
    server.make_room();
    whole_limit_free(&bh, 3).await;
}

/// Every front a user puts the bulkhead behind, on a full Redis, for each failure policy:
/// `Closed` refuses (the operation is never called), `Open` admits without a lease, `Local`
/// admits its share and then refuses as a bulkhead; no lease is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_acquires_through_every_front_by_the_failure_policy() {
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    let thirty = Duration::from_secs(30);
    let closed = bulkhead(
        &conn,
        "s49-front-closed",
        2,
        thirty,
        WhenUnavailable::Closed,
    );
    let open = bulkhead(&conn, "s49-front-open", 1, thirty, WhenUnavailable::Open);
    let local = bulkhead(
        &conn,
        "s49-front-local",
        4,
        thirty,
        WhenUnavailable::Local { share: 0.5 },
    );
    // Connected and scripts loaded while there is room.
    for bh in [&closed, &open, &local] {
        drop(bh.try_acquire().await.unwrap());
        server.until_no_lease(bh.key()).await;
    }
    server.fill_up();
    let ran = Arc::new(AtomicU32::new(0));
    let op = || {
        let ran = Arc::clone(&ran);
        async move {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(())
        }
    };

    // A pipeline.
    let pipeline = Pipeline::builder()
        .deadline(Duration::from_secs(2))
        .bulkhead(closed.clone())
        .build()
        .unwrap();
    assert_eq!(
        pipeline.call(op).await,
        Err(Error::Rejected(Rejected::BackendUnavailable))
    );
    // Behind a tower layer, in every mode.
    for mode in [AdmitMode::Reject, AdmitMode::WaitCall, AdmitMode::WaitReady] {
        let ran = Arc::clone(&ran);
        let mut svc = tower::ServiceBuilder::new()
            .layer(AdmitLayer::new(closed.clone(), mode).max_wait(Duration::from_secs(2)))
            .service_fn(move |x: u32| {
                ran.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, Error<std::convert::Infallible>>(x) }
            });
        let answer = svc.ready().await.unwrap().call(1).await;
        assert!(
            matches!(answer, Err(Error::Rejected(Rejected::BackendUnavailable))),
            "{mode:?}: {answer:?}"
        );
    }
    // Directly, waiting.
    assert_eq!(
        closed
            .acquire_before(Deadline::after(&Tokio, Duration::from_secs(2)))
            .await
            .map(drop),
        Err(Rejected::BackendUnavailable)
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0, "an operation ran unadmitted");

    // Open: admits past the limit, without a lease.
    let open_pipeline = Pipeline::builder()
        .deadline(Duration::from_secs(2))
        .bulkhead(open.clone())
        .build()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(open_pipeline.call(op).await, Ok(()));
        assert!(!open.try_acquire().await.unwrap().is_shared());
    }
    // Local: half of four slots, then full, however it is asked.
    let a = local.try_acquire().await.unwrap();
    let b = local
        .acquire_before(Deadline::after(&Tokio, Duration::from_secs(2)))
        .await
        .unwrap();
    assert!(!a.is_shared() && !b.is_shared());
    assert_eq!(
        local.try_acquire().await.map(drop),
        Err(Rejected::BulkheadFull)
    );
    let waited = local
        .acquire_before(Deadline::after(&Tokio, Duration::from_millis(300)))
        .await
        .map(drop);
    assert!(
        matches!(
            waited,
            Err(Rejected::BulkheadFull | Rejected::DeadlineExceeded)
        ),
        "{waited:?}"
    );
    drop((a, b));
    for bh in [&closed, &open, &local] {
        assert_eq!(server.zcard(bh.key()), 0, "a lease written on a full Redis");
    }
    server.make_room();
    whole_limit_free(&closed, 2).await;
    whole_limit_free(&local, 4).await;
}

/// Redis fills up while five holders hold every slot of a 3 s lease; for about 1.2 s,
/// holders are dropped at random (seeded) points and new callers keep asking (some cut at
/// random points too). No caller is ever given a lease while Redis is full; every dropped
/// holder's slot comes back; the holders kept still count once Redis has room (their
/// renewals tried again), so the limit is never exceeded; and nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_dropped_and_callers_cut_while_redis_is_full_leave_the_limit_exact() {
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    let lease = Duration::from_secs(3);
    let bh = bulkhead(&conn, "s49-churn", 5, lease, WhenUnavailable::Closed);
    let mut rng = SplitMix64::new(0x49_f011);
    let mut holders = Vec::new();
    for _ in 0..5 {
        let permit = bh.try_acquire().await.unwrap();
        assert!(permit.is_shared());
        holders.push(permit);
    }
    let filled = Instant::now();
    server.fill_up();
    // Three holders go at random points while full; two stay.
    let mut leaving = Vec::new();
    for permit in holders.drain(2..) {
        let after = Duration::from_millis(rng.between(0, 1000));
        leaving.push(tokio::spawn(async move {
            tokio::time::sleep(after).await;
            drop(permit);
        }));
    }
    let mut askers = Vec::new();
    for _ in 0..24 {
        let (bh, after, cut, waits) = (
            bh.clone(),
            Duration::from_millis(rng.between(0, 1000)),
            Duration::from_millis(rng.between(0, 200)),
            rng.below_or_equal(1) == 1,
        );
        askers.push(tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let asked = async {
                if waits {
                    bh.acquire_before(Deadline::after(&Tokio, Duration::from_millis(150)))
                        .await
                } else {
                    bh.try_acquire().await
                }
            };
            match tokio::time::timeout(cut, asked).await {
                Err(_) => None,
                Ok(answer) => Some(answer.map(|permit| permit.is_shared())),
            }
        }));
    }
    for task in leaving {
        task.await.unwrap();
    }
    let mut answered = 0;
    for task in askers {
        if let Some(answer) = task.await.unwrap() {
            answered += 1;
            assert!(
                matches!(
                    answer,
                    Err(Rejected::BulkheadFull
                        | Rejected::BackendUnavailable
                        | Rejected::DeadlineExceeded)
                ),
                "admitted on a full Redis: {answer:?}"
            );
        }
    }
    assert!(answered > 0);
    // The dropped holders' leases are gone while Redis is still full.
    eventually(async || (server.zcard(bh.key()) == 2).then_some(())).await;
    assert!(is_full(&server));
    assert!(
        filled.elapsed() < Duration::from_millis(2500),
        "too slow a host"
    );
    server.make_room();
    // Exactly three slots are free, now and past the kept leases' first term.
    let mut taken = Vec::new();
    eventually(async || {
        if let Ok(permit) = bh.try_acquire().await {
            taken.push(permit);
        }
        (taken.len() == 3).then_some(())
    })
    .await;
    stays_full_until(
        &bh,
        filled + Duration::from_millis(4500),
        "a kept holder's lease lapsed after Redis was full",
    )
    .await;
    drop((holders, taken));
    whole_limit_free(&bh, 5).await;
}
