//! Black-box, adversarial tests of the Redis rate limiter's lease mode, written from its
//! public docs only: the accuracy bound under mixed fleets, odd request sizes and bursts after
//! idle gaps; cells given back (racing decisions and refills, twice, during an outage, on
//! drop) really free again and never twice; lease mode through a pipeline and a tower layer
//! with futures dropped at seeded random points; `verify` with ACL users; the failure
//! policies once the held cells are spent; and extreme configurations.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{RedisServer, eventually};
use tidewall::admission::Admission;
use tidewall::pipeline::Pipeline;
use tidewall::tower::{AdmitLayer, AdmitMode};
use tidewall::{Deadline, Error, Rejected};
use tidewall_core::rng::SplitMix64;
use tidewall_redis::{ConnectError, LeaseMode, RedisConn, RedisRateLimiter, WhenUnavailable};
use tower::{Service, ServiceExt};

const HOUR: Duration = Duration::from_secs(3600);

/// One replica's limiter: `count` per `period`, bursts of `burst`, lease mode `lease` (exact
/// when `None`), failing closed with a generous deadline unless told otherwise.
struct Spec {
    count: u32,
    period: Duration,
    burst: u32,
    lease: Option<LeaseMode>,
    policy: WhenUnavailable,
    deadline: Duration,
}

impl Spec {
    fn new(count: u32, period: Duration, burst: u32) -> Self {
        Self {
            count,
            period,
            burst,
            lease: None,
            policy: WhenUnavailable::Closed,
            deadline: Duration::from_secs(1),
        }
    }

    fn lease(mut self, max_batch: u32) -> Self {
        self.lease = Some(LeaseMode::new(max_batch).unwrap());
        self
    }

    fn lease_mode(mut self, mode: LeaseMode) -> Self {
        self.lease = Some(mode);
        self
    }

    fn policy(mut self, policy: WhenUnavailable) -> Self {
        self.policy = policy;
        self
    }

    fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    fn build_on(self, url: &str, name: &str) -> RedisRateLimiter {
        let conn = RedisConn::open(url).unwrap();
        let builder = RedisRateLimiter::builder(&conn, name, self.count, self.period)
            .burst(self.burst)
            .deadline(self.deadline)
            .when_unavailable(self.policy);
        match self.lease {
            Some(mode) => builder.lease_mode(mode),
            None => builder,
        }
        .build()
        .unwrap()
    }

    fn build(self, server: &RedisServer, name: &str) -> RedisRateLimiter {
        self.build_on(&server.url(), name)
    }
}

/// The cells an exact-mode limiter of 1 per hour with `burst` admits now on `name`, greedily
/// in chunks (a one-per-hour limit frees nothing meanwhile).
async fn drain_exact(server: &RedisServer, name: &str, burst: u32) -> u64 {
    let exact = Spec::new(1, HOUR, burst).build(server, name);
    let mut admitted = 0u64;
    for chunk in [1000, 100, 10, 1] {
        while chunk <= burst && exact.check_n(chunk).await.is_ok() {
            admitted += u64::from(chunk);
        }
    }
    admitted
}

/// Whether `refused` is a plain rate-limit refusal.
fn is_rate_limited(refused: &Rejected) -> bool {
    matches!(refused, Rejected::RateLimited { .. })
}

/// Checks that no window of length `window` over `events` (instants and cells, sorted) holds
/// more than `bound` cells.
fn assert_windows(events: &[(Instant, u64)], window: Duration, bound: u64) {
    let mut end = 0;
    let mut inside = 0u64;
    for (start, (at, _)) in events.iter().enumerate() {
        while end < events.len() && events[end].0 < *at + window {
            inside += events[end].1;
            end += 1;
        }
        assert!(
            inside <= bound,
            "{inside} cells admitted in a {window:?} window: the bound is {bound}"
        );
        inside -= events[start].1;
    }
}

/// A one-per-hour limit shared by five lease replicas with different batches (1, 7, 32, the
/// burst, `u32::MAX`) and two exact replicas, asking for random cell counts (including the
/// batch, more than the batch, more than the burst); one lease replica stops after a few
/// cells holding the rest of its batch. Nothing frees during the test, so the fleet admits at
/// most the burst, and once every replica gives its cells back an exact limiter admits exactly
/// what nobody spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_fleet_never_spends_a_cell_twice_and_gives_back_every_unspent_one() {
    const BURST: u32 = 400;
    let server = RedisServer::start();
    let batches: [Option<u32>; 7] = [
        Some(1),
        Some(7),
        Some(32),
        Some(BURST),
        Some(u32::MAX),
        None,
        None,
    ];
    let replicas: Vec<RedisRateLimiter> = batches
        .iter()
        .map(|batch| {
            let spec = Spec::new(1, HOUR, BURST);
            match batch {
                Some(b) => spec.lease(*b),
                None => spec,
            }
            .build(&server, "mixed")
        })
        .collect();
    // The replica that stops early: a few cells, then idle while holding its batch.
    let idle = replicas[2].clone();
    let mut idle_spent = 0u64;
    for _ in 0..5 {
        idle.check().await.unwrap();
        idle_spent += 1;
    }
    let admitted = Arc::new(AtomicU64::new(idle_spent));
    let mut tasks = Vec::new();
    for (i, replica) in replicas.iter().enumerate() {
        if i == 2 {
            continue;
        }
        let max_batch = batches[i];
        for t in 0..2u64 {
            let (replica, admitted) = (replica.clone(), Arc::clone(&admitted));
            tasks.push(tokio::spawn(async move {
                let mut rng = SplitMix64::new(1000 + i as u64 * 10 + t);
                for _ in 0..3_000 {
                    let cells = match rng.below_or_equal(7) {
                        0 => max_batch.unwrap_or(5).min(BURST + 1),
                        1 => max_batch.unwrap_or(5).saturating_add(1).min(BURST + 1),
                        2 => BURST + 1 + u32::try_from(rng.below_or_equal(2)).unwrap(),
                        3 => BURST,
                        4 => 2 + u32::try_from(rng.below_or_equal(4)).unwrap(),
                        _ => 1,
                    };
                    match replica.check_n(cells).await {
                        Ok(()) => {
                            assert!(cells <= BURST, "{cells} cells admitted past the burst");
                            admitted.fetch_add(u64::from(cells), Ordering::Relaxed);
                        }
                        Err(Rejected::InsufficientCapacity { burst }) => {
                            assert!(cells > BURST, "{cells} cells refused as over the burst");
                            assert_eq!(burst, BURST);
                        }
                        Err(refused) => {
                            assert!(is_rate_limited(&refused), "{cells} cells: {refused:?}");
                            tokio::task::yield_now().await;
                        }
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let admitted = admitted.load(Ordering::Relaxed);
    assert!(
        admitted <= u64::from(BURST),
        "{admitted} admitted of a burst of {BURST}"
    );
    for replica in &replicas {
        replica.return_unspent().await.unwrap();
    }
    let free = drain_exact(&server, "mixed", BURST).await;
    assert_eq!(
        admitted + free,
        u64::from(BURST),
        "{admitted} spent + {free} free again"
    );
}

/// The documented bound over every window, with bursts after idle gaps of seconds: four lease
/// replicas with different batches and horizons and one exact replica, hammering in phases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_after_idle_gaps_stay_within_the_documented_bound() {
    const PER_SECOND: u32 = 500; // one cell every 2 ms
    const BURST: u32 = 25;
    let server = RedisServer::start();
    let modes = [
        Some(LeaseMode::new(1).unwrap()),
        Some(LeaseMode::new(8).unwrap().horizon(Duration::ZERO)),
        Some(LeaseMode::new(40).unwrap()),
        Some(LeaseMode::new(150).unwrap().horizon(Duration::from_secs(1))),
        None,
    ];
    let max_batches: u64 = 1 + 8 + 40 + 150;
    let replicas: Vec<RedisRateLimiter> = modes
        .into_iter()
        .map(|mode| {
            let spec = Spec::new(PER_SECOND, Duration::from_secs(1), BURST);
            match mode {
                Some(mode) => spec.lease_mode(mode),
                None => spec,
            }
            .build(&server, "gaps")
        })
        .collect();
    let started = Instant::now();
    let mut events: Vec<(Instant, u64)> = Vec::new();
    for (phase, idle) in [(0u64, 1_500u64), (1, 2_500), (2, 0)] {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (i, replica) in replicas.iter().enumerate() {
            for t in 0..2u64 {
                let (replica, stop) = (replica.clone(), Arc::clone(&stop));
                tasks.push(tokio::spawn(async move {
                    let mut rng = SplitMix64::new(phase * 100 + i as u64 * 10 + t);
                    let mut admitted = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let cells = if rng.below_or_equal(3) == 0 {
                            1 + u32::try_from(rng.below_or_equal(9)).unwrap()
                        } else {
                            1
                        };
                        match replica.check_n(cells).await {
                            Ok(()) => admitted.push((Instant::now(), u64::from(cells))),
                            Err(refused) => {
                                assert!(is_rate_limited(&refused), "{refused:?}");
                                tokio::task::yield_now().await;
                            }
                        }
                    }
                    admitted
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            events.extend(task.await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(idle)).await;
    }
    let span = started.elapsed();
    events.sort_by_key(|(at, _)| *at);
    let interval_us = 1_000_000 / u128::from(PER_SECOND);
    // A round trip, and a task descheduled between its decision and its timestamp: generous.
    let slack = Duration::from_millis(50);
    for window in [
        Duration::from_millis(10),
        Duration::from_millis(100),
        Duration::from_secs(1),
        span,
    ] {
        let exact = u64::from(BURST)
            + u64::try_from((window + slack).as_micros() / interval_us).unwrap()
            + 1;
        assert_windows(&events, window, exact + max_batches);
    }
}

/// Requests at and around the batch and the burst, on a limit that frees nothing meanwhile:
/// over the burst refused as such, the batch itself and more than a batch admitted while the
/// cells are free, and the accounting exact after the cells are given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_at_and_around_the_batch_and_the_burst_are_counted_exactly() {
    const BURST: u32 = 20;
    let server = RedisServer::start();
    let leased = Spec::new(1, HOUR, BURST).lease(10).build(&server, "sizes");
    assert_eq!(
        leased.check_n(BURST + 1).await,
        Err(Rejected::InsufficientCapacity { burst: BURST })
    );
    assert_eq!(
        leased.check_n(u32::MAX).await,
        Err(Rejected::InsufficientCapacity { burst: BURST })
    );
    // From rest every cell is free: the batch itself is admitted.
    leased.check_n(10).await.unwrap();
    let mut spent = 10u64;
    for cells in [1, 3, 10, 11, 5, 2, 1, 1, 1, 1] {
        match leased.check_n(cells).await {
            Ok(()) => spent += u64::from(cells),
            Err(refused) => assert!(is_rate_limited(&refused), "{cells}: {refused:?}"),
        }
    }
    assert!(spent <= u64::from(BURST), "{spent} admitted");
    leased.return_unspent().await.unwrap();
    let free = drain_exact(&server, "sizes", BURST).await;
    assert_eq!(
        spent + free,
        u64::from(BURST),
        "{spent} spent + {free} free"
    );

    // A request as large as the burst, which is the batch: admitted from rest, and nothing
    // after it.
    let whole = Spec::new(1, HOUR, BURST)
        .lease(BURST)
        .build(&server, "sizes-whole");
    whole.check_n(BURST).await.unwrap();
    let refused = whole.check().await.unwrap_err();
    assert!(is_rate_limited(&refused), "{refused:?}");
    whole.return_unspent().await.unwrap();
    assert_eq!(drain_exact(&server, "sizes-whole", BURST).await, 0);
}

/// A limit of one per hour with a burst of one: however many lease replicas, of whatever
/// batch and horizon, the fleet admits exactly one cell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_per_hour_is_one_cell_for_a_whole_fleet_of_extreme_batches() {
    let server = RedisServer::start();
    let mut replicas = Vec::new();
    for max_batch in [1, 2, 1000, u32::MAX] {
        for horizon in [Duration::ZERO, Duration::from_millis(10), Duration::MAX] {
            replicas.push(
                Spec::new(1, HOUR, 1)
                    .lease_mode(LeaseMode::new(max_batch).unwrap().horizon(horizon))
                    .build(&server, "one"),
            );
        }
    }
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for replica in &replicas {
        let (replica, admitted) = (replica.clone(), Arc::clone(&admitted));
        tasks.push(tokio::spawn(async move {
            for _ in 0..200 {
                match replica.check().await {
                    Ok(()) => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(refused) => {
                        assert!(is_rate_limited(&refused), "{refused:?}");
                        tokio::task::yield_now().await;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 1);
    for replica in &replicas {
        replica.return_unspent().await.unwrap();
    }
    assert_eq!(drain_exact(&server, "one", 1).await, 0);
}

/// The fastest rate the builder accepts (one cell a microsecond), the largest burst and the
/// largest batch, a huge horizon: decisions work, batches grow without overflow, and the
/// whole burst at once is admitted from rest; one cell a microsecond faster is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extremes_of_the_builder_work_in_lease_mode() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    assert!(
        RedisRateLimiter::builder(&conn, "too-fast", 1_000_001, Duration::from_secs(1))
            .lease_mode(LeaseMode::new(10).unwrap())
            .build()
            .is_err(),
        "a rate under 1 µs a cell is refused in lease mode too"
    );
    for (name, horizon) in [
        ("max-a", Duration::from_millis(10)),
        ("max-b", Duration::MAX),
        ("max-c", Duration::ZERO),
    ] {
        let fastest = Spec::new(1_000_000, Duration::from_secs(1), u32::MAX)
            .lease_mode(LeaseMode::new(u32::MAX).unwrap().horizon(horizon))
            .build(&server, name);
        for _ in 0..200_000 {
            fastest.check().await.unwrap();
        }
        fastest.check_n(1000).await.unwrap();
        let given = fastest.return_unspent().await.unwrap();
        assert!(given <= u64::from(u32::MAX), "{given}");
    }
    let whole = Spec::new(1_000_000, Duration::from_secs(1), u32::MAX)
        .lease(u32::MAX)
        .build(&server, "max-whole");
    whole.check_n(u32::MAX).await.unwrap();
}

/// A huge horizon on a modest limit: the batch is capped by `max_batch`, and the fleet stays
/// within the bound over the whole run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_horizon_is_capped_by_the_batch() {
    const PER_SECOND: u32 = 1000;
    const BURST: u32 = 50;
    const MAX_BATCH: u32 = 30;
    let server = RedisServer::start();
    let leased = Spec::new(PER_SECOND, Duration::from_secs(1), BURST)
        .lease_mode(LeaseMode::new(MAX_BATCH).unwrap().horizon(Duration::MAX))
        .build(&server, "huge-horizon");
    let started = Instant::now();
    let mut admitted = 0u64;
    while started.elapsed() < Duration::from_millis(800) {
        match leased.check().await {
            Ok(()) => admitted += 1,
            Err(Rejected::RateLimited { retry_after }) => {
                assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}");
                tokio::task::yield_now().await;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap();
    let bound = u64::from(BURST) + elapsed_ms + 50 + 1 + u64::from(MAX_BATCH);
    assert!(admitted <= bound, "{admitted} admitted, bound {bound}");
    assert!(
        admitted >= 400,
        "only {admitted} admitted in 800 ms at 1000/s"
    );
}

/// `return_unspent` called over and over while two tasks spend cells (and background refills
/// run): no cell is spent twice, none given back twice, and after the last give-back every
/// unspent cell is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_back_while_deciding_and_refilling_never_frees_a_cell_twice() {
    const BURST: u32 = 2_000;
    let server = RedisServer::start();
    let leased = Spec::new(1, HOUR, BURST).lease(64).build(&server, "race");
    let admitted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut spenders = Vec::new();
    for t in 0..2u64 {
        let (leased, admitted, stop) = (leased.clone(), Arc::clone(&admitted), Arc::clone(&stop));
        spenders.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(77 + t);
            while !stop.load(Ordering::Relaxed) {
                let cells = 1 + u32::try_from(rng.below_or_equal(2)).unwrap();
                match leased.check_n(cells).await {
                    Ok(()) => {
                        admitted.fetch_add(u64::from(cells), Ordering::Relaxed);
                    }
                    Err(refused) => {
                        assert!(is_rate_limited(&refused), "{refused:?}");
                        tokio::task::yield_now().await;
                    }
                }
            }
        }));
    }
    let mut rng = SplitMix64::new(5);
    for _ in 0..300u64 {
        leased.return_unspent().await.unwrap();
        tokio::time::sleep(Duration::from_micros(rng.below_or_equal(499))).await;
    }
    stop.store(true, Ordering::Relaxed);
    for task in spenders {
        task.await.unwrap();
    }
    // Let any background refill land, then give back what is held.
    tokio::time::sleep(Duration::from_millis(100)).await;
    leased.return_unspent().await.unwrap();
    let admitted = admitted.load(Ordering::Relaxed);
    assert!(admitted <= u64::from(BURST), "{admitted} admitted");
    let free = drain_exact(&server, "race", BURST).await;
    assert!(
        admitted + free <= u64::from(BURST),
        "{admitted} spent + {free} free: a cell was freed twice"
    );
    assert_eq!(
        admitted + free,
        u64::from(BURST),
        "{admitted} spent + {free} free: cells were lost"
    );
}

/// 0 outside lease mode, 0 before anything was taken, 0 the second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_back_nothing_is_zero() {
    let server = RedisServer::start();
    let exact = Spec::new(1, HOUR, 10).build(&server, "zero");
    exact.check().await.unwrap();
    assert_eq!(exact.return_unspent().await, Ok(0));
    assert_eq!(exact.return_unspent().await, Ok(0));
    let leased = Spec::new(1, HOUR, 10).lease(4).build(&server, "zero");
    assert_eq!(leased.return_unspent().await, Ok(0), "nothing taken yet");
    let mut spent = 1u64;
    for _ in 0..3 {
        if leased.check().await.is_ok() {
            spent += 1;
        }
    }
    leased.return_unspent().await.unwrap();
    assert_eq!(leased.return_unspent().await, Ok(0), "given back once");
    assert_eq!(leased.clone().return_unspent().await, Ok(0), "clones share");
    assert_eq!(drain_exact(&server, "zero", 10).await, 10 - spent);
    // The exact limiter never held anything, even after decisions on the same name.
    assert_eq!(exact.return_unspent().await, Ok(0));
}

/// Redis frozen, then killed: the give-back was sent and not answered, so the replica gives
/// the cells up (Redis may have run it: kept too, they could be spent twice). After the thaw
/// nothing is left to give back, and Redis never has more free than was not spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_sent_and_not_answered_gives_the_cells_up() {
    const BURST: u32 = 100;
    let mut server = RedisServer::start();
    let leased = Spec::new(1, HOUR, BURST)
        .lease(64)
        .deadline(Duration::from_millis(200))
        .build(&server, "outage");
    let mut spent = 0u64;
    for _ in 0..40 {
        leased.check().await.unwrap();
        spent += 1;
    }
    // Any background refill lands first: only the give-back meets the frozen server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.freeze();
    let started = Instant::now();
    assert_eq!(
        leased.return_unspent().await,
        Err(Rejected::BackendUnavailable)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?} for a 200 ms deadline",
        started.elapsed()
    );
    server.thaw();
    assert_eq!(leased.return_unspent().await, Ok(0), "given up, not held");
    let free = drain_exact(&server, "outage", BURST).await;
    assert!(
        free <= u64::from(BURST) - spent,
        "{free} free after {spent} spent: given back twice"
    );

    // Killed: the same, and the replica has nothing left to spend without Redis.
    let again = Spec::new(1, HOUR, BURST)
        .lease(64)
        .deadline(Duration::from_millis(200))
        .build(&server, "outage-kill");
    for _ in 0..40 {
        again.check().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    assert_eq!(
        again.return_unspent().await,
        Err(Rejected::BackendUnavailable)
    );
    assert_eq!(
        again.check().await,
        Err(Rejected::BackendUnavailable),
        "nothing held, and no Redis to refill from"
    );
    server.restart();
    assert_eq!(again.return_unspent().await, Ok(0));
}

/// A give-back while the breaker around Redis is open is not sent: the cells stay held,
/// spendable without Redis, and a later give-back, once Redis answers again, returns them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_the_breaker_stops_keeps_the_cells() {
    const BURST: u32 = 100;
    let mut server = RedisServer::start();
    // A horizon that long makes every batch after the first the whole `max_batch`.
    let leased = Spec::new(1, HOUR, BURST)
        .lease_mode(LeaseMode::new(10).unwrap().horizon(Duration::MAX))
        .deadline(Duration::from_millis(100))
        .build(&server, "breaker-open");
    leased.check().await.unwrap();
    leased.check().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    // Asks larger than what is held go to Redis and fail, until the breaker opens (five
    // failures in a row); the held cells are not touched.
    for _ in 0..5 {
        assert_eq!(leased.check_n(50).await, Err(Rejected::BackendUnavailable));
    }
    assert_eq!(
        leased.return_unspent().await,
        Err(Rejected::BackendUnavailable)
    );
    leased
        .check()
        .await
        .expect("a held cell, spent without Redis");
    server.restart();
    let given = eventually(async || leased.return_unspent().await.ok()).await;
    assert_eq!(given, 8, "the nine held, less the one spent");
}

/// Clones dropped one by one, the last inside the runtime: the held cells come back once,
/// and every unspent cell is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_of_many_clones_gives_back_once() {
    const BURST: u32 = 100;
    let server = RedisServer::start();
    let leased = Spec::new(1, HOUR, BURST).lease(64).build(&server, "clones");
    let clones: Vec<_> = (0..5).map(|_| leased.clone()).collect();
    let mut spent = 0u64;
    for clone in &clones {
        for _ in 0..8 {
            clone.check().await.unwrap();
            spent += 1;
        }
    }
    drop(clones);
    // `leased` still holds them: not yet free for others.
    let mut free = drain_exact(&server, "clones", BURST).await;
    assert!(free < u64::from(BURST) - spent, "cells were held");
    drop(leased);
    eventually(async || {
        free += drain_exact(&server, "clones", BURST).await;
        (free == u64::from(BURST) - spent).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(drain_exact(&server, "clones", BURST).await, 0, "once");
}

/// Dropping the last handle after its runtime shut down, with no runtime at all, or inside
/// another runtime: no panic.
#[test]
fn dropping_the_last_handle_without_its_runtime_does_not_panic() {
    let server = RedisServer::start();
    let url = server.url();
    let make = |name: &'static str| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let limiter = rt.block_on(async {
            let limiter = Spec::new(1, HOUR, 100).lease(64).build_on(&url, name);
            for _ in 0..40 {
                limiter.check().await.unwrap();
            }
            limiter
        });
        drop(rt);
        limiter
    };
    // No runtime at all.
    drop(make("no-runtime"));
    // A clone dropped in a plain thread, the last handle on this one.
    let limiter = make("thread");
    let clone = limiter.clone();
    std::thread::spawn(move || drop(clone)).join().unwrap();
    drop(limiter);
    // Inside another runtime (its own connection's runtime is gone).
    let limiter = make("other-runtime");
    let other = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    other.block_on(async move {
        drop(limiter);
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
    drop(other);
    // Dropped inside a runtime that shuts down at once.
    let limiter = make("shutting-down");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move { drop(limiter) });
    drop(rt);
}

/// A pipeline over a lease-mode limiter, calls dropped at seeded random points while a second
/// replica spends too: never more cells than the limit, and the replica still decides
/// afterwards (no refill left stuck by a dropped caller).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_with_calls_dropped_at_random_points_stays_within_the_limit() {
    const BURST: u32 = 600;
    let server = RedisServer::start();
    let leased = Spec::new(1, HOUR, BURST)
        .lease(16)
        .build(&server, "pipeline");
    let other = Spec::new(1, HOUR, BURST)
        .lease(5)
        .build(&server, "pipeline");
    let pipeline = Pipeline::builder()
        .deadline(Duration::from_secs(1))
        .rate_limit(leased.clone())
        .build()
        .unwrap();
    let ran = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let other_admitted = {
        let (other, stop) = (other.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut admitted = 0u64;
            // At most 100 cells: the pipeline always has cells to spare.
            while !stop.load(Ordering::Relaxed) && admitted < 100 {
                if other.check().await.is_ok() {
                    admitted += 1;
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            admitted
        })
    };
    let mut rng = SplitMix64::new(4242);
    let mut dropped = 0u32;
    for _ in 0..400 {
        let budget = Duration::from_micros(rng.below_or_equal(399));
        let work = Duration::from_micros(rng.below_or_equal(299));
        let ran = Arc::clone(&ran);
        let call = pipeline.call(move || {
            let ran = Arc::clone(&ran);
            async move {
                ran.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(work).await;
                Ok::<_, ()>(())
            }
        });
        match tokio::time::timeout(budget, call).await {
            Err(_) => dropped += 1,
            Ok(Ok(())) => {}
            Ok(Err(Error::Rejected(refused))) => panic!("{refused:?} with cells to spare"),
            Ok(Err(other)) => panic!("{other:?}"),
        }
    }
    assert!(dropped > 0, "some calls were dropped");
    stop.store(true, Ordering::Relaxed);
    let other_admitted = other_admitted.await.unwrap();
    // Still deciding: a call runs to completion.
    let done = tokio::time::timeout(
        Duration::from_secs(2),
        pipeline.call(|| async { Ok::<_, ()>(1) }),
    )
    .await
    .expect("the lease replica answers after the drops");
    assert_eq!(done, Ok(1));
    let ran = ran.load(Ordering::Relaxed) + 1;
    assert!(ran > 0);
    leased.return_unspent().await.unwrap();
    other.return_unspent().await.unwrap();
    let free = drain_exact(&server, "pipeline", BURST).await;
    assert!(
        ran + other_admitted + free <= u64::from(BURST),
        "{ran} ran + {other_admitted} elsewhere + {free} free: more than the {BURST} cells"
    );
}

/// A tower service behind an `AdmitLayer` over a lease-mode limiter, in each mode, calls
/// dropped at seeded random points: the inner service runs at most once per cell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tower_layer_with_calls_dropped_at_random_points_stays_within_the_limit() {
    const BURST: u32 = 300;
    let server = RedisServer::start();
    let mut rng = SplitMix64::new(99);
    for (name, mode) in [
        ("tower-reject", AdmitMode::Reject),
        ("tower-ready", AdmitMode::WaitReady),
        ("tower-call", AdmitMode::WaitCall),
    ] {
        let leased = Spec::new(1, HOUR, BURST).lease(16).build(&server, name);
        let calls = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&calls);
        let layer = AdmitLayer::new(leased.clone(), mode).max_wait(Duration::from_millis(200));
        let service = tower::ServiceBuilder::new()
            .layer(layer)
            .map_err(Error::Inner)
            .service_fn(move |work: Duration| {
                let counted = Arc::clone(&counted);
                async move {
                    counted.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(work).await;
                    Ok::<_, std::convert::Infallible>(())
                }
            });
        for _ in 0..(BURST + 200) {
            let mut service = service.clone();
            let budget = Duration::from_micros(rng.below_or_equal(299));
            let work = Duration::from_micros(rng.below_or_equal(199));
            let outcome =
                tokio::time::timeout(
                    budget,
                    async move { service.ready().await?.call(work).await },
                )
                .await;
            match outcome {
                Ok(Err(Error::Rejected(refused))) => {
                    assert!(
                        matches!(
                            refused,
                            Rejected::RateLimited { .. } | Rejected::DeadlineExceeded
                        ),
                        "{name}: {refused:?}"
                    );
                    tokio::task::yield_now().await;
                }
                Ok(Err(other)) => panic!("{name}: {other:?}"),
                Ok(Ok(())) | Err(_) => {}
            }
        }
        let calls = calls.load(Ordering::Relaxed);
        assert!(calls <= u64::from(BURST), "{name}: {calls} calls");
        leased.return_unspent().await.unwrap();
        let free = drain_exact(&server, name, BURST).await;
        assert!(
            calls + free <= u64::from(BURST),
            "{name}: {calls} calls + {free} free: more than the {BURST} cells"
        );
    }
}

/// `try_admit` in lease mode: held cells admitted without a round trip, the next batch
/// fetched in the background; mixed with `check`, never more than the limit, and every
/// unspent cell given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_admit_spends_only_held_cells() {
    const BURST: u32 = 200;
    let server = RedisServer::start();
    let leased = Spec::new(1, HOUR, BURST).lease(16).build(&server, "try");
    let exact = Spec::new(1, HOUR, BURST).build(&server, "try");
    assert!(
        Admission::try_admit(&exact).is_none(),
        "exact mode never decides without Redis"
    );
    let mut admitted = 0u64;
    let mut via_try = 0u64;
    for i in 0..5_000u32 {
        if Admission::try_admit(&leased).is_some() {
            admitted += 1;
            via_try += 1;
        } else if i % 4 == 0 {
            match leased.check().await {
                Ok(()) => admitted += 1,
                Err(refused) => {
                    assert!(is_rate_limited(&refused), "{refused:?}");
                    tokio::task::yield_now().await;
                }
            }
        } else {
            tokio::task::yield_now().await;
        }
    }
    assert!(via_try > 0, "held cells were admitted by try_admit");
    assert!(admitted <= u64::from(BURST), "{admitted} admitted");
    leased.return_unspent().await.unwrap();
    assert_eq!(
        admitted + drain_exact(&server, "try", BURST).await,
        u64::from(BURST)
    );
}

/// `until_ready_before` in lease mode: a wait known to end past the deadline is refused
/// without sleeping it out; two replicas waiting their turn stay within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_in_lease_mode_stays_within_deadline_and_bound() {
    let server = RedisServer::start();
    let hourly = Spec::new(1, HOUR, 1).lease(4).build(&server, "wait-hour");
    hourly
        .until_ready_before(Deadline::at(Instant::now() + Duration::from_secs(2)))
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        hourly
            .until_ready_before(Deadline::at(Instant::now() + Duration::from_secs(3)))
            .await,
        Err(Rejected::DeadlineExceeded)
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "an hour's wait refused after {:?}",
        started.elapsed()
    );

    const PER_SECOND: u32 = 20;
    const BURST: u32 = 2;
    let replicas = [
        Spec::new(PER_SECOND, Duration::from_secs(1), BURST)
            .lease(5)
            .build(&server, "wait-fleet"),
        Spec::new(PER_SECOND, Duration::from_secs(1), BURST)
            .lease(50)
            .build(&server, "wait-fleet"),
    ];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for replica in &replicas {
        for _ in 0..2 {
            let replica = replica.clone();
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0u64;
                while started.elapsed() < Duration::from_millis(1_500) {
                    let deadline = Deadline::at(Instant::now() + Duration::from_millis(500));
                    let asked = Instant::now();
                    match replica.until_ready_before(deadline).await {
                        Ok(()) => admitted += 1,
                        Err(refused) => {
                            assert_eq!(refused, Rejected::DeadlineExceeded);
                            tokio::task::yield_now().await;
                        }
                    }
                    assert!(
                        asked.elapsed() < Duration::from_millis(500 + 500),
                        "a wait past its deadline: {:?}",
                        asked.elapsed()
                    );
                }
                admitted
            }));
        }
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap();
    let bound = u64::from(BURST) + (elapsed_ms + 50) / 50 + 1 + 5 + 50;
    assert!(admitted <= bound, "{admitted} admitted, bound {bound}");
    assert!(admitted >= 10, "only {admitted} admitted in 1.5 s at 20/s");
}

/// Once Redis is down and the held cells are spent, each policy decides as documented: open
/// admits, closed refuses as unavailable, local admits its share of the burst. Without
/// Redis a replica never spends more than its batch of held cells.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failure_policy_decides_once_the_held_cells_are_spent() {
    const BURST: u32 = 100;
    const MAX_BATCH: u32 = 8;
    for (name, policy) in [
        ("open", WhenUnavailable::Open),
        ("closed", WhenUnavailable::Closed),
        ("local", WhenUnavailable::Local { share: 0.5 }),
    ] {
        let mut server = RedisServer::start();
        let leased = Spec::new(1, HOUR, BURST)
            .lease(MAX_BATCH)
            .policy(policy)
            .deadline(Duration::from_millis(200))
            .build(&server, name);
        for _ in 0..20 {
            leased.check().await.unwrap();
        }
        server.kill();
        let mut admitted = 0u64;
        let mut first_refusal = None;
        for _ in 0..300 {
            match leased.check().await {
                Ok(()) => admitted += 1,
                Err(refused) => {
                    first_refusal.get_or_insert(refused);
                    tokio::task::yield_now().await;
                }
            }
        }
        match name {
            "open" => assert_eq!(admitted, 300, "open admits everything"),
            "closed" => {
                assert!(
                    admitted <= u64::from(MAX_BATCH),
                    "closed: {admitted} admitted without Redis"
                );
                assert_eq!(first_refusal, Some(Rejected::BackendUnavailable));
            }
            _ => {
                assert!(
                    (50..=50 + u64::from(MAX_BATCH)).contains(&admitted),
                    "local: {admitted} admitted without Redis, its share is 50"
                );
                assert!(
                    matches!(first_refusal, Some(Rejected::RateLimited { .. })),
                    "{first_refusal:?}"
                );
            }
        }
    }
}

/// Redis frozen (SIGSTOP) under a lease-mode replica with many callers: every decision
/// returns within the deadline plus generous slack, open admits, closed refuses, and waits
/// end by their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_never_holds_a_decision_past_the_deadline() {
    let server = RedisServer::start();
    let deadline = Duration::from_millis(100);
    let slack = Duration::from_secs(1);
    let open = Spec::new(1_000, Duration::from_secs(1), 1_000)
        .lease(8)
        .policy(WhenUnavailable::Open)
        .deadline(deadline)
        .build(&server, "frozen");
    let closed = Spec::new(1_000, Duration::from_secs(1), 1_000)
        .lease(8)
        .policy(WhenUnavailable::Closed)
        .deadline(deadline)
        .build(&server, "frozen");
    for _ in 0..20 {
        open.check().await.unwrap();
        closed.check().await.unwrap();
    }
    server.freeze();
    let mut tasks = Vec::new();
    for (limiter, is_open) in [(open.clone(), true), (closed.clone(), false)] {
        for _ in 0..3 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                let mut refusals = 0u32;
                for _ in 0..30 {
                    let asked = Instant::now();
                    let decision = limiter.check().await;
                    assert!(
                        asked.elapsed() < deadline + slack,
                        "a decision took {:?}",
                        asked.elapsed()
                    );
                    match decision {
                        Ok(()) => {}
                        Err(refused) => {
                            assert!(!is_open, "open refused: {refused:?}");
                            assert_eq!(refused, Rejected::BackendUnavailable);
                            refusals += 1;
                            tokio::task::yield_now().await;
                        }
                    }
                }
                refusals
            }));
        }
    }
    let mut closed_refusals = 0;
    for task in tasks {
        closed_refusals += task.await.unwrap();
    }
    assert!(closed_refusals > 0, "closed refused once its cells ran out");
    let asked = Instant::now();
    let waited = closed
        .until_ready_before(Deadline::at(Instant::now() + Duration::from_millis(300)))
        .await;
    assert!(
        asked.elapsed() < Duration::from_millis(300) + slack,
        "a wait took {:?}",
        asked.elapsed()
    );
    assert!(waited.is_err(), "{waited:?}");
    // Nothing held (its cells ran out): 0 without a round trip, or unavailable; in time.
    let asked = Instant::now();
    let given = closed.return_unspent().await;
    assert!(
        matches!(given, Ok(0) | Err(Rejected::BackendUnavailable)),
        "{given:?}"
    );
    assert!(asked.elapsed() < deadline + slack);
    server.thaw();
    eventually(async || open.check().await.ok()).await;
}

/// Creates an ACL user on `server` with `rules` and returns its URL.
fn acl_user(server: &RedisServer, user: &str, rules: &str) -> String {
    let mut command = redis::cmd("ACL");
    command.arg("SETUSER").arg(user).arg("on").arg(">pw");
    for rule in rules.split_whitespace() {
        command.arg(rule);
    }
    let _: () = command
        .query(&mut server.admin().expect("admin connection"))
        .expect("ACL SETUSER");
    format!("redis://{user}:pw@127.0.0.1:{}", server.port())
}

/// A user `verify` accepts in lease mode can run lease mode: batches taken, cells given back.
/// Tried with the commands the docs name (`EVALSHA`, `SCRIPT LOAD`, `TIME`, `GET`, `SET`), and
/// with users lacking one other command each; users lacking a named one are refused by
/// `verify` with a permission error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_verify_accepts_can_run_lease_mode() {
    const BURST: u32 = 1_000;
    let server = RedisServer::start();
    let minimal = "resetkeys ~* resetchannels -@all +evalsha +script|load +time +get +set";
    let mut users: Vec<(String, String)> =
        vec![("minimal".to_owned(), acl_user(&server, "minimal", minimal))];
    for extra in [
        "del",
        "unlink",
        "pexpire",
        "expire",
        "pexpireat",
        "psetex",
        "setex",
        "pttl",
        "ttl",
        "incrby",
        "decrby",
        "getset",
        "getdel",
        "exists",
        "mget",
        "eval",
        "hget",
        "hset",
    ] {
        let user = format!("no-{extra}");
        let url = acl_user(&server, &user, &format!("~* &* +@all -{extra}"));
        users.push((user, url));
    }
    for (i, (user, url)) in users.iter().enumerate() {
        let name = format!("acl-{i}");
        let leased = Spec::new(1, HOUR, BURST).lease(32).build_on(url, &name);
        match leased.verify().await {
            Ok(()) => {
                let mut spent = 0u64;
                for _ in 0..100 {
                    leased
                        .check()
                        .await
                        .unwrap_or_else(|e| panic!("{user}: verified, then {e:?}"));
                    spent += 1;
                }
                leased
                    .return_unspent()
                    .await
                    .unwrap_or_else(|e| panic!("{user}: verified, then giving back: {e:?}"));
                assert_eq!(
                    drain_exact(&server, &name, BURST).await,
                    u64::from(BURST) - spent,
                    "{user}: the cells given back are free again"
                );
            }
            Err(error) => assert!(
                matches!(error, ConnectError::Permission { .. }),
                "{user}: {error:?}"
            ),
        }
    }
    assert!(
        Spec::new(1, HOUR, BURST)
            .lease(32)
            .build_on(&users[0].1, "acl-minimal")
            .verify()
            .await
            .is_ok(),
        "the documented commands are enough for verify"
    );
    for missing in ["evalsha", "time", "get", "set"] {
        let rules = minimal.replace(&format!(" +{missing}"), "");
        let url = acl_user(&server, &format!("lacks-{missing}"), &rules);
        let error = Spec::new(1, HOUR, BURST)
            .lease(32)
            .build_on(&url, "acl-lacking")
            .verify()
            .await
            .unwrap_err();
        assert!(
            matches!(error, ConnectError::Permission { .. }),
            "without {missing}: {error:?}"
        );
    }
}

/// `until_ready_before` with short deadlines on a healthy Redis, failing open: a round trip cut
/// short by the caller's own deadline is not Redis being unavailable, so the open policy must
/// not admit past the limit. A lease replica and an exact one over a limit of one cell a
/// millisecond admit at most the exact limit over the run (stretched by a round trip) plus
/// the lease replica's batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_waits_on_a_healthy_redis_never_fail_open_past_the_bound() {
    const PER_SECOND: u32 = 1_000;
    const MAX_BATCH: u32 = 4;
    let server = RedisServer::start();
    let leased = Spec::new(PER_SECOND, Duration::from_secs(1), 1)
        .lease(MAX_BATCH)
        .policy(WhenUnavailable::Open)
        .build(&server, "short-waits");
    // An exact replica on the same name, failing open too (its term in the bound is 0).
    let exact = Spec::new(PER_SECOND, Duration::from_secs(1), 1)
        .policy(WhenUnavailable::Open)
        .build(&server, "short-waits");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let leased = if t % 2 == 0 {
            leased.clone()
        } else {
            exact.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(300 + t);
            let mut admitted = 0u64;
            let mut unavailable = 0u64;
            while started.elapsed() < Duration::from_millis(1_000) {
                let budget = Duration::from_micros(rng.below_or_equal(2_499));
                match leased
                    .until_ready_before(Deadline::at(Instant::now() + budget))
                    .await
                {
                    Ok(()) => admitted += 1,
                    Err(Rejected::BackendUnavailable) => unavailable += 1,
                    Err(_) => tokio::task::yield_now().await,
                }
            }
            (admitted, unavailable)
        }));
    }
    let (mut admitted, mut unavailable) = (0, 0);
    for task in tasks {
        let (a, u) = task.await.unwrap();
        admitted += a;
        unavailable += u;
    }
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap();
    // Burst 1, a cell a millisecond, 50 ms of round trip and scheduling slack, the batch.
    let bound = 1 + elapsed_ms + 50 + 1 + u64::from(MAX_BATCH);
    assert!(
        admitted <= bound,
        "{admitted} admitted in {elapsed_ms} ms on a healthy Redis (bound {bound}); \
         {unavailable} refused as unavailable"
    );
}

/// The same with the closed policy: a healthy Redis is never reported unavailable to a
/// caller whose own deadline is short; the wait ends with `DeadlineExceeded` (or admits).
/// In lease mode and, for comparison, in exact mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_waits_on_a_healthy_redis_are_not_reported_unavailable() {
    let server = RedisServer::start();
    let mut counts = Vec::new();
    for (name, lease) in [("short-lease", true), ("short-exact", false)] {
        let spec = Spec::new(1_000, Duration::from_secs(1), 1);
        let leased = if lease { spec.lease(4) } else { spec }.build(&server, name);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..4u64 {
            let leased = leased.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = SplitMix64::new(400 + t);
                let mut unavailable = 0u64;
                while started.elapsed() < Duration::from_millis(1_000) {
                    let budget = Duration::from_micros(rng.below_or_equal(2_499));
                    match leased
                        .until_ready_before(Deadline::at(Instant::now() + budget))
                        .await
                    {
                        Err(Rejected::BackendUnavailable) => unavailable += 1,
                        Err(_) => tokio::task::yield_now().await,
                        Ok(()) => {}
                    }
                }
                unavailable
            }));
        }
        let mut unavailable = 0;
        for task in tasks {
            unavailable += task.await.unwrap();
        }
        counts.push((name, unavailable));
    }
    assert!(
        counts.iter().all(|(_, n)| *n == 0),
        "a healthy Redis reported unavailable: {counts:?}"
    );
}

/// A give-back sent to a Redis that answers too late: Redis takes the cells back once it runs
/// again, so the replica must not keep them too ("briefly stricter, never looser"). A frozen
/// server holds the GIVE_BACK in its socket past the deadline, then runs it when thawed:
/// what the replica spent, what it can still admit on its own and what Redis has free never
/// add up to more than the burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_answered_too_late_is_not_kept_too() {
    const BURST: u32 = 20;
    let server = RedisServer::start();
    // A horizon that long makes every batch after the first the whole `max_batch`.
    let leased = Spec::new(1, HOUR, BURST)
        .lease_mode(LeaseMode::new(10).unwrap().horizon(Duration::MAX))
        .deadline(Duration::from_millis(50))
        .build(&server, "late-give-back");
    // A first give-back, answered, loads its script: the late one then runs as sent.
    leased.check().await.unwrap();
    leased.check().await.unwrap();
    assert_eq!(leased.return_unspent().await, Ok(9));
    leased.check().await.unwrap();
    let mut spent = 3u64;
    let ran = server.calls("evalsha");
    server.freeze();
    let given = leased.return_unspent().await;
    server.thaw();
    assert_eq!(given, Err(Rejected::BackendUnavailable));
    eventually(async || (server.calls("evalsha") > ran).then_some(())).await;
    let free = drain_exact(&server, "late-give-back", BURST).await;
    while spent + free <= u64::from(BURST) && Admission::try_admit(&leased).is_some() {
        spent += 1;
    }
    assert!(
        spent + free <= u64::from(BURST),
        "{spent} spent + {free} free from a burst of {BURST}"
    );
    assert_eq!(
        leased.return_unspent().await,
        Ok(0),
        "nothing left to give back"
    );
}
