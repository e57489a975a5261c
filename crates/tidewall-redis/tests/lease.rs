//! Lease mode against a real redis-server: decisions from held cells with one round trip per
//! batch, the documented accuracy bound over every window with three replicas, unspent cells
//! given back, and the failure policy once Redis is gone and the held cells are spent.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Delayed, RedisServer, eventually, limiter_per};
use tidewall::{ConfigError, Deadline, Rejected};
use tidewall_core::rng::SplitMix64;
use tidewall_redis::{LeaseMode, RedisConn, RedisRateLimiter, WhenUnavailable};

/// A limit of `per_second` cells a second and bursts of `burst`, in lease mode with batches
/// of at most `lease`, or exact.
fn limiter(
    server: &RedisServer,
    name: &str,
    per_second: u32,
    burst: u32,
    lease: Option<u32>,
) -> RedisRateLimiter {
    limiter_per(server, name, per_second, SECOND, burst, lease)
}

const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Admits as many cells as `limiter` gives, one after another, until refused.
async fn drain(limiter: &RedisRateLimiter) -> u32 {
    let mut admitted = 0;
    while limiter.check().await.is_ok() {
        admitted += 1;
    }
    admitted
}

#[test]
fn a_zero_batch_is_refused() {
    assert_eq!(
        LeaseMode::new(0).unwrap_err(),
        ConfigError::Zero { field: "max_batch" }
    );
}

/// A replica deciding as fast as it can spends held cells and asks Redis about once per
/// batch of 500. Its batch is what it spends in the horizon at its observed rate, so the
/// horizon is 1 s: the rate a loaded machine's stalls leave still fills the whole batch
/// (with the default 10 ms, a stalled loop would measure a low rate and ask for less).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_replica_decides_locally_and_asks_redis_about_once_per_batch() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let limiter = RedisRateLimiter::builder(&conn, "hot", 1_000_000, SECOND)
        .burst(1_000_000)
        .deadline(SECOND)
        .when_unavailable(WhenUnavailable::Closed)
        .lease_mode(LeaseMode::new(500).unwrap().horizon(SECOND))
        .build()
        .unwrap();
    limiter.check().await.unwrap();
    let before = server.calls("evalsha");
    for _ in 0..100_000 {
        limiter.check().await.unwrap();
    }
    let round_trips = server.calls("evalsha") - before;
    // The batch is 500 from the second on: a few hundred round trips for 100 000 decisions,
    // where exact mode makes 100 000.
    assert!(
        round_trips <= 1_000,
        "{round_trips} round trips for 100 000 decisions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denial_is_kept_locally_until_the_next_cell_is_free() {
    let server = RedisServer::start();
    let limiter = limiter_per(&server, "denied", 1, MINUTE, 5, Some(10));
    assert_eq!(drain(&limiter).await, 5, "the burst, then refused");
    let before = server.calls("evalsha");
    for _ in 0..1_000 {
        let refused = limiter.check().await.unwrap_err();
        let Rejected::RateLimited { retry_after } = refused else {
            panic!("{refused:?}")
        };
        assert!(retry_after <= MINUTE, "{retry_after:?}");
    }
    assert_eq!(
        server.calls("evalsha"),
        before,
        "no round trip while denied"
    );
}

/// The accuracy bound, over every window: three replicas, each with two tasks asking as fast
/// as the limit allows, admit at most what the exact limit would over the window stretched by
/// a round trip, plus `3 × max_batch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_stay_within_the_documented_bound_over_every_window() {
    const PER_SECOND: u32 = 2_000; // one cell every 500 µs
    const BURST: u32 = 20;
    const MAX_BATCH: u32 = 50;
    let server = RedisServer::start();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let replica = limiter(&server, "fleet", PER_SECOND, BURST, Some(MAX_BATCH));
        for _ in 0..2 {
            let (replica, stop) = (replica.clone(), Arc::clone(&stop));
            tasks.push(tokio::spawn(async move {
                let mut admitted = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match replica.check().await {
                        Ok(()) => admitted.push(Instant::now()),
                        Err(Rejected::RateLimited { retry_after }) => {
                            tokio::time::sleep(retry_after).await;
                        }
                        Err(other) => panic!("{other:?}"),
                    }
                }
                admitted
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut admitted = Vec::new();
    for task in tasks {
        admitted.extend(task.await.unwrap());
    }
    let span = started.elapsed();
    admitted.sort();
    let interval = Duration::from_secs(1) / PER_SECOND;
    // A round trip on loopback, generously: a batch granted this long before a window opens
    // may be spent inside it.
    let round_trip = Duration::from_millis(20);
    for window in [
        Duration::from_millis(10),
        Duration::from_millis(100),
        Duration::from_secs(1),
    ] {
        let bound = BURST as usize
            + ((window + round_trip).as_micros() / interval.as_micros()) as usize
            + 1
            + 3 * MAX_BATCH as usize;
        let mut end = 0;
        for (start, at) in admitted.iter().enumerate() {
            while end < admitted.len() && admitted[end] < *at + window {
                end += 1;
            }
            assert!(
                end - start <= bound,
                "{} admitted in a {window:?} window: the bound is {bound}",
                end - start
            );
        }
    }
    // And the fleet is not starved: held batches cost at most `3 × max_batch` at the end.
    let least = (span.as_micros() / interval.as_micros()) as usize * 9 / 10;
    assert!(
        admitted.len() >= least,
        "{} admitted in {span:?}, expected at least {least}",
        admitted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unspent_cells_given_back_are_admitted_elsewhere() {
    let server = RedisServer::start();
    let leased = limiter_per(&server, "returned", 1, HOUR, 100, Some(64));
    let mut spent = 0;
    for _ in 0..40 {
        leased.check().await.unwrap();
        spent += 1;
    }
    // The batch has grown: cells are held that nobody spent.
    let given = leased.return_unspent().await.unwrap();
    assert!(given > 0, "cells were held");
    assert_eq!(leased.return_unspent().await.unwrap(), 0, "given back once");
    let exact = limiter_per(&server, "returned", 1, HOUR, 100, None);
    assert_eq!(
        drain(&exact).await,
        100 - spent,
        "every cell not spent is free again"
    );
}

/// A replica refused for an hour remembers that denial, but asks Redis again within
/// `DENIAL_RECHECK`: cells another replica gave back meanwhile reach it then, in exact mode
/// and in lease mode alike. Its refusals still report the whole wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cells_given_back_reach_a_refused_replica_within_the_recheck() {
    let server = RedisServer::start();
    for (name, refused_batch) in [("to-exact", None), ("to-leased", Some(8))] {
        let holder = limiter_per(&server, name, 1, HOUR, 100, Some(64));
        for _ in 0..40 {
            holder.check().await.unwrap();
        }
        let refused = limiter_per(&server, name, 1, HOUR, 100, refused_batch);
        let before = drain(&refused).await;
        let Err(Rejected::RateLimited { retry_after }) = refused.check().await else {
            panic!("{name}: drained, so refused");
        };
        assert!(
            retry_after > MINUTE,
            "{name}: the whole wait, {retry_after:?}"
        );
        let given = holder.return_unspent().await.unwrap();
        assert!(given > 0, "{name}: cells were held");
        let returned = Instant::now();
        let mut after = 0;
        eventually(async || {
            after += drain(&refused).await;
            (u64::from(after) >= given).then_some(())
        })
        .await;
        let took = returned.elapsed();
        assert_eq!(
            40 + before + after,
            100,
            "{name}: every cell, once (40 spent by the holder)"
        );
        assert!(
            took < RedisRateLimiter::DENIAL_RECHECK + Duration::from_secs(2),
            "{name}: given-back cells reached the refused replica after {took:?}"
        );
    }
}

/// A caller waiting an hour with no deadline (`until_ready_before`, exact and leased) asks
/// again within `DENIAL_RECHECK`: cells given back meanwhile admit it then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wait_sees_cells_given_back_within_the_recheck() {
    let server = RedisServer::start();
    for (kind, waiter_batch) in [("wait-exact", None), ("wait-leased", Some(8))] {
        // The holder's batches follow its own rate, so four checks may leave it holding none
        // (each batch exactly what it spent): then nothing can be given back, and the scenario
        // starts over on a fresh key, a few times at most.
        let mut tries = 0;
        let (name, waiting, given) = loop {
            tries += 1;
            let name = format!("{kind}-{tries}");
            let holder = limiter_per(&server, &name, 1, HOUR, 10, Some(64));
            for _ in 0..4 {
                holder.check().await.unwrap();
            }
            let waiter = limiter_per(&server, &name, 1, HOUR, 10, waiter_batch);
            drain(&waiter).await;
            let waiting = {
                let waiter = waiter.clone();
                tokio::spawn(async move { waiter.until_ready_before(Deadline::none()).await })
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!waiting.is_finished(), "{name}: an hour's wait");
            let given = holder.return_unspent().await.unwrap();
            if given > 0 || tries == 5 {
                break (name, waiting, given);
            }
            waiting.abort();
        };
        assert!(given > 0, "{name}: no cells held after {tries} tries");
        let within = RedisRateLimiter::DENIAL_RECHECK + Duration::from_secs(2);
        let admitted = tokio::time::timeout(within, waiting).await;
        assert!(
            matches!(admitted, Ok(Ok(Ok(())))),
            "{name}: the waiter saw the given-back cells within {within:?}: {admitted:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_gives_the_cells_back() {
    let server = RedisServer::start();
    let leased = limiter_per(&server, "dropped", 1, HOUR, 100, Some(64));
    for _ in 0..40 {
        leased.check().await.unwrap();
    }
    drop(leased);
    let exact = limiter_per(&server, "dropped", 1, HOUR, 100, None);
    // Given back in the background: eventually all 60 are admitted (none twice).
    let mut admitted = 0;
    eventually(async || {
        admitted += drain(&exact).await;
        (admitted == 60).then_some(())
    })
    .await;
    assert_eq!(drain(&exact).await, 0);
}

/// Held cells are spent while Redis is gone (they were granted); then the failure policy
/// decides, as in exact mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_cells_outlive_redis_then_the_policy_decides() {
    let mut server = RedisServer::start();
    let leased = limiter(&server, "outage", 1_000_000, 1_000_000, Some(100));
    for _ in 0..1_000 {
        leased.check().await.unwrap();
    }
    server.kill();
    let mut admitted = 0;
    let refused = loop {
        match leased.check().await {
            Ok(()) => admitted += 1,
            Err(refused) => break refused,
        }
        assert!(admitted <= 100, "never more than a batch without Redis");
    };
    assert_eq!(refused, Rejected::BackendUnavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_a_batch_is_decided_exactly() {
    let server = RedisServer::start();
    let leased = limiter_per(&server, "large", 1, HOUR, 100, Some(10));
    leased.check_n(11).await.unwrap(); // the script loaded
    let before = server.calls("evalsha");
    leased.check_n(39).await.unwrap();
    assert_eq!(server.calls("evalsha") - before, 1, "one exact round trip");
    let exact = limiter_per(&server, "large", 1, HOUR, 100, None);
    assert_eq!(drain(&exact).await, 50);
}

/// A lease-mode limiter of 1000 cells a second on `conn` with batches of at most 8, failing
/// with `policy` after `deadline`, once `conn` is connected (through an exact probe that
/// fails closed, so no policy can pass for an answer). It holds nothing yet.
async fn fresh_leased(
    conn: &RedisConn,
    name: &str,
    deadline: Duration,
    policy: WhenUnavailable,
) -> RedisRateLimiter {
    let probe = RedisRateLimiter::builder(conn, &format!("{name}-probe"), 1, HOUR)
        .deadline(Duration::from_secs(1))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    eventually(async || probe.check_n(0).await.ok()).await;
    RedisRateLimiter::builder(conn, name, 1000, SECOND)
        .lease_mode(LeaseMode::new(8).unwrap())
        .deadline(deadline)
        .when_unavailable(policy)
        .build()
        .unwrap()
}

/// Callers that run dry while Redis is frozen wait for one shared round trip, each until its
/// own deadline: none is queued behind the others' timeouts (r5 finding 2: the k-th returned
/// after about k deadlines), and a caller with a shorter deadline of its own returns by it,
/// not after the others' round trips. The limit's deadline is 3 s: the short caller must
/// return within half of it (the shared round trip it must not wait for ends about 3 s after
/// it asked), and each of the four within two deadlines (queued behind another's timeout, one
/// would take three), bounds that leave seconds for a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_for_a_batch_each_return_by_their_own_deadline() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let deadline = Duration::from_secs(3);
    let leased = fresh_leased(&conn, "queued", deadline, WhenUnavailable::Closed).await;
    server.freeze();
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let leased = leased.clone();
            tokio::spawn(async move {
                let asked = Instant::now();
                let decided = leased.check().await;
                (decided, asked.elapsed())
            })
        })
        .collect();
    // The four are waiting for Redis; one more caller, with 20 ms of its own.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let asked = Instant::now();
    let short = leased
        .until_ready_before(Deadline::at(Instant::now() + Duration::from_millis(20)))
        .await;
    let took = asked.elapsed();
    assert_eq!(short, Err(Rejected::DeadlineExceeded));
    assert!(
        took < deadline / 2,
        "a 20 ms deadline returned after {took:?}, behind the others' round trips"
    );
    for caller in callers {
        let (decided, took) = caller.await.unwrap();
        assert_eq!(decided, Err(Rejected::BackendUnavailable));
        assert!(
            took < 2 * deadline,
            "a decision with a {deadline:?} deadline took {took:?}"
        );
    }
    server.thaw();
    eventually(async || leased.check().await.ok()).await;
}

/// A caller whose deadline has already passed gets one decision, and when Redis does not
/// answer it, `DeadlineExceeded`: never the failure policy's admission (r5 finding 1), and
/// at once, not after the limit's deadline (r11 finding 2: it waited for the batch that long).
/// The limit's deadline is 10 s and "at once" under 2 s, room for a loaded machine; not
/// longer, since the policy's answer below waits that deadline out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_already_passed_is_refused_not_failed_open() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let deadline = Duration::from_secs(10);
    let leased = fresh_leased(&conn, "passed", deadline, WhenUnavailable::Open).await;
    server.freeze();
    let asked = Instant::now();
    let decided = leased
        .until_ready_before(Deadline::at(Instant::now()))
        .await;
    let took = asked.elapsed();
    assert_eq!(decided, Err(Rejected::DeadlineExceeded));
    // One round trip of at most 1 ms, not the limit's 10 s (r11 finding 2).
    assert!(took < deadline / 5, "took {took:?}");
    // Without a deadline of its own, the policy answers (once the batch the refused caller
    // started has waited out the limit's deadline).
    assert_eq!(leased.check().await, Ok(()));
    server.thaw();
}

/// Dropping the last handle on a plain thread, the runtime still running, gives the held
/// cells back (r5 finding 5: they were lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_on_a_plain_thread_gives_the_cells_back() {
    let server = RedisServer::start();
    let leased = limiter_per(&server, "thread-dropped", 1, HOUR, 100, Some(64));
    for _ in 0..40 {
        leased.check().await.unwrap();
    }
    // Any background refill lands first (it holds a handle): the thread drops the last one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::thread::spawn(move || drop(leased)).join().unwrap();
    let exact = limiter_per(&server, "thread-dropped", 1, HOUR, 100, None);
    let mut admitted = 0;
    eventually(async || {
        admitted += drain(&exact).await;
        (admitted == 60).then_some(())
    })
    .await;
    assert_eq!(drain(&exact).await, 0);
}

/// A lease-mode limiter of one cell an hour with bursts of `burst` on `conn`, batches of at
/// most `max_batch`, failing with `policy` after `deadline`, once its scripts are loaded and
/// `conn` connected (a slow link makes a first round trip several).
async fn loaded_hourly(
    conn: &RedisConn,
    name: &str,
    burst: u32,
    max_batch: u32,
    deadline: Duration,
    policy: WhenUnavailable,
) -> RedisRateLimiter {
    let leased = RedisRateLimiter::builder(conn, name, 1, HOUR)
        .burst(burst)
        .lease_mode(LeaseMode::new(max_batch).unwrap())
        .deadline(deadline)
        .when_unavailable(policy)
        .build()
        .unwrap();
    eventually(async || leased.verify().await.ok()).await;
    leased
}

/// Redis answers every round trip, slowly (300 ms, within the 500 ms deadline but not twice),
/// and many callers race for small batches: a caller whose batch others took, and whose next
/// batch is still on its way when its deadline of 500 ms runs out, is refused `RateLimited`,
/// never answered by the failure policy (r11 finding 1: `Open` admitted it without a cell,
/// past the limit; `Closed` reported a healthy Redis unavailable). A limit of one cell an hour
/// frees nothing meanwhile: the fleet admits at most its burst. (The 200 ms between one round
/// trip and the deadline is room for a loaded machine: one late round trip would rightly be
/// answered by the policy.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_lose_a_batch_on_a_slow_redis_are_not_answered_by_the_policy() {
    const BURST: u32 = 50;
    let server = RedisServer::start();
    let proxy = Delayed::start(&server, Duration::from_millis(300));
    let conn = RedisConn::open(proxy.url()).unwrap();
    for (name, policy) in [
        ("slow-open", WhenUnavailable::Open),
        ("slow-closed", WhenUnavailable::Closed),
    ] {
        let leased = loaded_hourly(&conn, name, BURST, 4, Duration::from_millis(500), policy).await;
        let started = Instant::now();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let leased = leased.clone();
                tokio::spawn(async move {
                    let (mut admitted, mut unavailable) = (0u32, 0u32);
                    while started.elapsed() < Duration::from_millis(3_000) {
                        match leased.check().await {
                            Ok(()) => admitted += 1,
                            Err(Rejected::BackendUnavailable) => unavailable += 1,
                            Err(_) => {}
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    (admitted, unavailable)
                })
            })
            .collect();
        let (mut admitted, mut unavailable) = (0, 0);
        for task in tasks {
            let (a, u) = task.await.unwrap();
            admitted += a;
            unavailable += u;
        }
        assert_eq!(
            unavailable, 0,
            "{name}: a healthy Redis reported unavailable"
        );
        assert!(
            admitted <= BURST,
            "{name}: {admitted} admitted on a limit of {BURST} that frees nothing"
        );
        assert!(admitted > 0, "{name}: nothing admitted");
    }
}

/// Checks cancelled at random points while their batch is on its way (a 30 ms round trip)
/// lose nothing: the batch lands and is held for the next ones, so once the replica gives
/// back what it holds, the cells it admitted and the ones free add up to the burst exactly
/// (r5 finding 9: each cancel lost the batch it was fetching). The limit's deadline is 10 s,
/// so no refill is cut (losing a batch Redis granted) by a loaded machine; the give-back is
/// repeated until the sum is reached, for batches still landing, and a lost batch keeps it
/// short for all of the 10 s that is tried (one cell an hour frees nothing meanwhile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_cancelled_during_a_refill_lose_no_batch() {
    const BURST: u32 = 1_000;
    let server = RedisServer::start();
    let proxy = Delayed::start(&server, Duration::from_millis(30));
    let conn = RedisConn::open(proxy.url()).unwrap();
    let leased = loaded_hourly(
        &conn,
        "cancelled",
        BURST,
        4,
        Duration::from_secs(10),
        WhenUnavailable::Closed,
    )
    .await;
    let mut rng = SplitMix64::new(909);
    let (mut admitted, mut cancelled) = (0u64, 0u32);
    for _ in 0..150 {
        let budget = Duration::from_micros(rng.below_or_equal(40_000));
        match tokio::time::timeout(budget, leased.check()).await {
            Ok(Ok(())) => admitted += 1,
            Ok(Err(refused)) => panic!("{refused:?} with cells to spare"),
            Err(_) => cancelled += 1,
        }
    }
    assert!(cancelled >= 10, "only {cancelled} checks cancelled");
    // The replica gives back what it holds, and the free cells are taken, until every cell is
    // accounted for: a batch still landing is held, then given back on a later round.
    let exact = limiter_per(&server, "cancelled", 1, HOUR, BURST, None);
    let (mut given, mut free, started) = (0u64, 0u64, Instant::now());
    loop {
        given += leased.return_unspent().await.unwrap();
        free += u64::from(drain(&exact).await);
        if admitted + free >= u64::from(BURST) || started.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        admitted + free,
        u64::from(BURST),
        "{admitted} admitted, {free} free ({given} of them given back) after {cancelled} cancels"
    );
    // Nothing more is held or free: the sum is final.
    assert_eq!(leased.return_unspent().await.unwrap(), 0);
    assert_eq!(drain(&exact).await, 0);
}
