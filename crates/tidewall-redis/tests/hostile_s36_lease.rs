//! Hostile black-box tests of `RedisBulkhead`'s lease renewal as its struct doc now states it
//! (audit s36), against a real redis-server, written from the public docs only:
//!
//! > A renewal that goes unanswered is tried again a twentieth of the lease after it ended,
//! > and so on until the lease has run out on this replica's clock (counted from when the
//! > last answered renewal, or the acquire, was sent); then every third of the lease again.
//! > So a held lease lapses only when Redis stays unreachable until less than a twentieth of
//! > the lease and one deadline (plus a reconnection) is left of it [...] Once Redis answers
//! > that the lease is gone, renewing stops while the permit is held.
//!
//! The holder reaches Redis through a [`Gate`], a TCP proxy the test switches between passing
//! bytes, losing every request (a partition: connections that lost one are cut when it heals)
//! and resetting every connection (a host that refuses); it also counts each `EVALSHA` the
//! holder sends, with its instant, so the renewal cadence can be read from outside. A second
//! replica reaches Redis directly and checks that the limit stays full.
//!
//! These run in real time: every bound has hundreds of milliseconds of slack for a loaded
//! 2-core host, and each test takes under 10 s.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::gate::{Gate, Mode};
use common::{RedisServer, eventually};
use tidewall::Rejected;
use tidewall::pipeline::Pipeline;
use tidewall_redis::{RedisBulkhead, RedisConn, RedisPermit, WhenUnavailable};

// === helpers =================================================================================

/// A replica on `url`, failing closed.
fn bulkhead_on(
    url: &str,
    name: &str,
    limit: u32,
    lease: Duration,
    deadline: Duration,
) -> RedisBulkhead {
    RedisBulkhead::builder(&RedisConn::open(url).unwrap(), name, limit)
        .lease(lease)
        .deadline(deadline)
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap()
}

/// A replica straight to the server, with a generous deadline: the one that checks the limit.
fn checker(server: &RedisServer, name: &str, limit: u32, lease: Duration) -> RedisBulkhead {
    bulkhead_on(&server.url(), name, limit, lease, Duration::from_secs(2))
}

/// Takes a permit (trying until Redis answers one in time), and when the successful acquire
/// was asked for: the lease runs from no earlier than that.
async fn acquire(bulkhead: &RedisBulkhead) -> (RedisPermit, Instant) {
    let started = Instant::now();
    loop {
        let asked = Instant::now();
        match bulkhead.try_acquire().await {
            Ok(permit) => {
                assert!(permit.is_shared(), "a Redis lease, not a fallback");
                return (permit, asked);
            }
            Err(refused) => assert!(
                started.elapsed() < Duration::from_secs(5),
                "no permit in 5 s: {refused:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Until `until`, every acquire of `other` is refused as full: the held leases did not lapse.
async fn stays_full(other: &RedisBulkhead, until: Instant, origin: Instant, what: &str) {
    while Instant::now() < until {
        match other.try_acquire().await {
            Err(Rejected::BulkheadFull) => {}
            Ok(_) => panic!(
                "{what}: a held lease lapsed; another replica got a slot {:?} after the acquire",
                origin.elapsed()
            ),
            Err(refused) => panic!(
                "{what}: the checking replica was refused with {refused:?} {:?} after the acquire",
                origin.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(at.into()).await;
}

// === 1. an outage from the acquire on: no renewal answered at all =============================

/// "counted from when the last answered renewal, or the acquire, was sent": no renewal is
/// ever answered here. A 5 s lease (a twentieth: 250 ms) with a 100 ms deadline; every request
/// is lost from 0.3 s after the acquire until 1.3 s before the lease would run out (68 % of the
/// term, both regular renewals lost), leaving five twentieths where the docs ask for one and a
/// deadline plus a reconnection. Until a full second past the lease's end, a replica that
/// reaches Redis directly finds the limit full; after the drop it frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_survives_a_partition_covering_every_renewal_since_the_acquire() {
    let server = RedisServer::start();
    let gate = Gate::start(&server);
    let lease = Duration::from_secs(5);
    let holder = bulkhead_on(
        &gate.url(),
        "from-acquire",
        1,
        lease,
        Duration::from_millis(100),
    );
    let other = checker(&server, "from-acquire", 1, lease);
    let (permit, asked) = acquire(&holder).await;
    sleep_until(asked + Duration::from_millis(300)).await;
    gate.set(Mode::Blackhole);
    sleep_until(asked + lease - Duration::from_millis(1300)).await;
    gate.set(Mode::Pass);
    stays_full(
        &other,
        asked + lease + Duration::from_secs(1),
        asked,
        "partition",
    )
    .await;
    drop(permit);
    eventually(async || other.try_acquire().await.ok()).await;
}

// === 2. connections reset for most of the term: renewals fail fast ===========================

/// The same bound when Redis is unreachable because every connection is reset (renewals fail
/// at once instead of timing out, and every reconnection fails too until the end): six
/// permits held by one replica through a pipeline call, a 5 s lease, connections refused from
/// 0.3 s after the first acquire until 1.3 s before its lease ends. The docs' "(plus a
/// reconnection)" is one reconnection, not a backoff grown over the outage: none of the six
/// leases lapses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_leases_held_in_a_pipeline_survive_connections_refused_for_most_of_the_term() {
    let server = RedisServer::start();
    let gate = Gate::start(&server);
    let lease = Duration::from_secs(5);
    let holder = bulkhead_on(&gate.url(), "refused", 6, lease, Duration::from_millis(100));
    let other = checker(&server, "refused", 6, lease);
    // Five permits by hand, the sixth held by a pipeline call that lasts through it all.
    let mut permits = Vec::new();
    let (first, asked) = acquire(&holder).await;
    permits.push(first);
    for _ in 0..4 {
        permits.push(acquire(&holder).await.0);
    }
    let pipeline = Pipeline::builder()
        .bulkhead(holder.clone())
        .build()
        .unwrap();
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let (leave_tx, leave_rx) = tokio::sync::oneshot::channel::<()>();
    let call = tokio::spawn(async move {
        let mut entered = Some(entered_tx);
        let mut leave = Some(leave_rx);
        loop {
            let answer = pipeline
                .call(|| {
                    let entered = entered.take();
                    let leave = leave.take();
                    async move {
                        if let (Some(entered), Some(leave)) = (entered, leave) {
                            let _ = entered.send(());
                            let _ = leave.await;
                        }
                        Ok::<_, ()>(())
                    }
                })
                .await;
            match answer {
                Ok(()) => return,
                // Redis did not answer this acquire in time: the call never started.
                Err(tidewall::Error::Rejected(_)) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(other) => panic!("the pipeline call failed: {other:?}"),
            }
        }
    });
    entered_rx.await.expect("the pipeline call started");
    // (On a loaded host the six acquires may take longer: the outage then starts later and
    // is shorter, and still ends 1.3 s before the first lease would run out.)
    sleep_until(asked + Duration::from_millis(300)).await;
    gate.set(Mode::Refuse);
    sleep_until(asked + lease - Duration::from_millis(1300)).await;
    gate.set(Mode::Pass);
    stays_full(
        &other,
        asked + lease + Duration::from_secs(1),
        asked,
        "reset",
    )
    .await;
    leave_tx.send(()).unwrap();
    call.await.unwrap();
    drop(permits);
    let mut again = Vec::new();
    eventually(async || {
        if let Ok(permit) = other.try_acquire().await {
            again.push(permit);
        }
        (again.len() == 6).then_some(())
    })
    .await;
}

// === 3. the cadence: a twentieth while the lease may be held, then a third, then nothing =====

/// The cadence, read from the holder's `EVALSHA`s as they leave it (lost or not). A 2.4 s
/// lease (a third: 800 ms; a twentieth: 120 ms) and a 100 ms deadline; every request is lost
/// from 0.4 s after the acquire until 4.5 s, long past the lease's end.
///
/// * From the first renewal (0.8 s) until the lease has run out on the replica's clock
///   (2.4 s), an unanswered renewal is tried again a twentieth after it ended: about every
///   220 ms, some seven tries (every third would be two).
/// * Then "every third of the lease again": from 2.9 s to 4.5 s, about two (every twentieth
///   would be seven).
/// * Once it heals, Redis answers that the lease is gone (it expired at 2.4 s) and "renewing
///   stops while the permit is held": the count stops growing, with the permit still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_renewals_come_every_twentieth_then_every_third_then_stop_once_gone() {
    let server = RedisServer::start();
    let gate = Gate::start(&server);
    let lease = Duration::from_millis(2400);
    let holder = bulkhead_on(&gate.url(), "cadence", 1, lease, Duration::from_millis(100));
    let (permit, asked) = acquire(&holder).await;
    let acquired = Instant::now();
    let at = |ms: u64| asked + Duration::from_millis(ms);
    sleep_until(at(400)).await;
    gate.set(Mode::Blackhole);
    sleep_until(at(4500)).await;
    gate.set(Mode::Pass);
    let quick = gate.evalsha_between(at(700).max(acquired), at(2400));
    let slow = gate.evalsha_between(at(2900), at(4500));
    assert!(
        quick >= 4,
        "an unanswered renewal is tried again a twentieth of the lease after it ended: only \
         {quick} tries while the lease could still be held (every third would be 2, every \
         twentieth about 7)"
    );
    assert!(
        slow <= 4,
        "once the lease ran out on the replica's clock, tries come every third of the lease: \
         {slow} between 2.9 s and 4.5 s (every third would be 2, every twentieth about 7)"
    );
    // Renewing stops once Redis says the lease is gone: the count must hold still for 2 s (two
    // and a half thirds of the lease) within 5 s of the partition's end.
    let healed = Instant::now();
    let (mut count, mut since) = (gate.evalsha_total(), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = gate.evalsha_total();
        if now != count {
            (count, since) = (now, Instant::now());
        }
        if since.elapsed() >= Duration::from_secs(2) {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(5),
            "renewals go on every third of the lease after Redis answered that the lease is \
             gone ({count} EVALSHAs so far)"
        );
    }
    drop(permit);
}

// === 4. a lease deleted under its holder: renewing stops, nothing is resurrected =============

/// "Once Redis answers that the lease is gone, renewing stops while the permit is held, and the
/// limit may be overshot by it until it drops." The leases' sorted set is deleted 0.2 s after
/// the acquire (a 1.5 s lease, renewed every 0.5 s): the next renewal finds it gone, so a
/// second replica gets the slot (the documented overshoot) and keeps it; the holder sends no
/// renewal after that one, and neither permit's release disturbs the other's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_deleted_under_its_holder_is_not_renewed_again_nor_resurrected() {
    let server = RedisServer::start();
    let gate = Gate::start(&server);
    let lease = Duration::from_millis(1500);
    let holder = bulkhead_on(&gate.url(), "deleted", 1, lease, Duration::from_secs(1));
    let other = checker(&server, "deleted", 1, lease);
    let (permit, asked) = acquire(&holder).await;
    let acquired = Instant::now();
    sleep_until(asked + Duration::from_millis(200)).await;
    server.command(&["DEL", holder.key()]);
    // The renewal at 0.5 s finds it gone.
    sleep_until(asked + Duration::from_millis(1200)).await;
    let taken = other
        .try_acquire()
        .await
        .expect("the deleted lease was renewed back into the set");
    let renewals = gate.evalsha_between(acquired, Instant::now());
    assert!(
        renewals >= 1,
        "the renewal at a third of the lease was sent"
    );
    sleep_until(asked + Duration::from_millis(3200)).await;
    assert_eq!(
        gate.evalsha_between(acquired, Instant::now()),
        renewals,
        "renewals went on after Redis answered that the lease was gone"
    );
    drop(permit);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = checker(&server, "deleted", 1, lease);
    assert_eq!(
        third.try_acquire().await.map(drop),
        Err(Rejected::BulkheadFull),
        "the holder's release removed the other replica's lease"
    );
    drop(taken);
    eventually(async || third.try_acquire().await.ok()).await;
}

// === 5. a permit dropped during a partition stops renewing ===================================

/// "renewed in the background while held": a permit dropped in the middle of a partition,
/// while its renewal is being tried again every twentieth, must not keep trying once the
/// partition heals (which would keep its lease alive for ever). A 3 s lease, 100 ms deadline;
/// requests lost from 0.3 s to 2.0 s; the permit dropped at 1.5 s. No `EVALSHA` leaves the
/// holder after the drop, and the slot comes back (released, or expired at 3 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_dropped_during_a_partition_stops_its_quick_retries() {
    let server = RedisServer::start();
    let gate = Gate::start(&server);
    let lease = Duration::from_secs(3);
    let holder = bulkhead_on(&gate.url(), "dropped", 1, lease, Duration::from_millis(100));
    let other = checker(&server, "dropped", 1, lease);
    let (permit, asked) = acquire(&holder).await;
    let at = |ms: u64| asked + Duration::from_millis(ms);
    sleep_until(at(300)).await;
    gate.set(Mode::Blackhole);
    sleep_until(at(1500)).await;
    let before_drop = gate.evalsha_total();
    assert!(before_drop >= 2, "the renewal at 1 s was tried (and lost)");
    drop(permit);
    let dropped = Instant::now();
    sleep_until(at(2000)).await;
    gate.set(Mode::Pass);
    eventually(async || other.try_acquire().await.ok()).await;
    sleep_until(at(4500)).await;
    assert_eq!(
        gate.evalsha_between(dropped + Duration::from_millis(150), Instant::now()),
        0,
        "a dropped permit's lease was still being renewed"
    );
}

// === 6. Redis answers errors (out of memory) for most of the term ============================

/// Redis reachable but refusing writes (`maxmemory` below what it uses: every script that
/// writes is answered with an OOM error) for most of a 4 s lease: from 0.3 s after the acquire
/// to 1.1 s before its end. The docs promise the lease lapses "only when Redis stays
/// unreachable until less than a twentieth of the lease and one deadline" is left; here Redis
/// was never unreachable, and a twentieth plus a deadline is 0.3 s. Once writes are allowed
/// again, the lease must still be held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_survives_renewals_refused_with_errors_for_most_of_the_term() {
    let server = RedisServer::start();
    let lease = Duration::from_secs(4);
    let holder = bulkhead_on(&server.url(), "oom", 1, lease, Duration::from_millis(100));
    let other = checker(&server, "oom", 1, lease);
    // The checker's script loaded before writes are refused.
    assert!(other.verify().await.is_ok());
    let (permit, asked) = acquire(&holder).await;
    sleep_until(asked + Duration::from_millis(300)).await;
    server.command(&["CONFIG", "SET", "maxmemory", "1"]);
    // Writes are refused now: a renewal meets the error.
    sleep_until(asked + lease - Duration::from_millis(1100)).await;
    server.command(&["CONFIG", "SET", "maxmemory", "0"]);
    stays_full(&other, asked + lease + Duration::from_secs(1), asked, "OOM").await;
    drop(permit);
    eventually(async || other.try_acquire().await.ok()).await;
}

// === 8. a flapping network: each answered renewal starts the count again ====================

/// "until the lease has run out on this replica's clock (counted from when the last answered
/// renewal [...] was sent)": a network that is down 1.5 s, up 0.7 s, down 1.5 s, up 0.7 s,
/// down 1.5 s (68 % of the time) under a 3 s lease renewed every second, with a 100 ms
/// deadline. Each time it comes up, the renewal tried again lands, and the lease's term
/// counts from it: quick tries must resume after each later loss, not only in the first term
/// after the acquire. At every heal at least 0.9 s of the lease is left (a twentieth is
/// 150 ms), so the lease never lapses: a replica reaching Redis directly finds the limit full
/// throughout, outages included, until 1 s after the last heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_survives_a_flapping_network_because_each_answered_renewal_restarts_its_term() {
    let server = RedisServer::start();
    let gate = Gate::start(&server);
    let lease = Duration::from_secs(3);
    let holder = bulkhead_on(
        &gate.url(),
        "flapping",
        1,
        lease,
        Duration::from_millis(100),
    );
    let other = checker(&server, "flapping", 1, lease);
    let (permit, asked) = acquire(&holder).await;
    let at = move |ms: u64| asked + Duration::from_millis(ms);
    let plan = [
        (300, Mode::Blackhole),
        (1800, Mode::Pass),
        (2500, Mode::Blackhole),
        (4000, Mode::Pass),
        (4700, Mode::Blackhole),
        (6200, Mode::Pass),
    ];
    let checking = {
        let other = other.clone();
        tokio::spawn(async move { stays_full(&other, at(7200), asked, "flapping").await })
    };
    for (when, mode) in plan {
        sleep_until(at(when)).await;
        gate.set(mode);
    }
    checking.await.unwrap();
    drop(permit);
    eventually(async || other.try_acquire().await.ok()).await;
}

// === 9. the holder's own acquires open its breaker during the outage =========================

/// "renewed in the background while held (every third of the lease, each renewal within the
/// deadline, and sent even while the breaker around Redis is open [...])" together with the
/// quicker tries: during a partition of most of a 5 s term, the holding replica keeps asking
/// for another slot every 20 ms; each ask goes unanswered, so its breaker around Redis opens
/// and may still be open when the partition heals 1.3 s before the lease ends. The renewal
/// tried again after the heal must go out regardless, and the held lease must not lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_tries_pass_a_breaker_opened_by_the_holders_own_failed_acquires() {
    let server = RedisServer::start();
    let gate = Gate::start(&server);
    let lease = Duration::from_secs(5);
    let holder = bulkhead_on(
        &gate.url(),
        "own-breaker",
        1,
        lease,
        Duration::from_millis(100),
    );
    let other = checker(&server, "own-breaker", 1, lease);
    let (permit, asked) = acquire(&holder).await;
    let at = move |ms: u64| asked + Duration::from_millis(ms);
    sleep_until(at(300)).await;
    gate.set(Mode::Blackhole);
    let asking = {
        let holder = holder.clone();
        tokio::spawn(async move {
            let mut refused = Vec::new();
            while Instant::now() < at(3700) {
                match holder.try_acquire().await {
                    Ok(_) => panic!("an acquire was admitted during the partition"),
                    Err(why) => refused.push(why),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            refused
        })
    };
    sleep_until(at(3700)).await;
    gate.set(Mode::Pass);
    let refused = asking.await.unwrap();
    assert!(
        refused
            .iter()
            .all(|why| *why == Rejected::BackendUnavailable),
        "failing closed: {refused:?}"
    );
    stays_full(&other, at(6000), asked, "own breaker").await;
    drop(permit);
    eventually(async || other.try_acquire().await.ok()).await;
}

// === 7. the script cache flushed again and again while a lease is held =======================

/// "renewed in the background while held": a held 1.5 s lease (renewed every 0.5 s) while
/// the server's script cache is flushed every 20 ms for 4.5 s (three terms). Every renewal
/// meets a cache that may have lost its script; none may be lost to that. A lease that lapsed
/// meanwhile would be found gone (or reaped) afterwards: for one more term after the storm, a
/// second replica must still find the limit full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_survives_its_script_being_flushed_again_and_again() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(1500);
    let holder = bulkhead_on(&server.url(), "flushed", 1, lease, Duration::from_secs(1));
    let other = checker(&server, "flushed", 1, lease);
    let (permit, asked) = acquire(&holder).await;
    let stop = Arc::new(AtomicBool::new(false));
    let flusher = {
        let stop = Arc::clone(&stop);
        let mut admin = server.admin().unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let _: redis::RedisResult<()> = redis::cmd("SCRIPT").arg("FLUSH").query(&mut admin);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    sleep_until(asked + Duration::from_millis(4500)).await;
    stop.store(true, Ordering::SeqCst);
    tokio::task::spawn_blocking(move || flusher.join().unwrap())
        .await
        .unwrap();
    stays_full(&other, Instant::now() + lease, asked, "script flushes").await;
    drop(permit);
    eventually(async || other.try_acquire().await.ok()).await;
}
