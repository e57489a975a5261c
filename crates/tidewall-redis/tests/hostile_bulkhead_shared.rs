//! Hostile black-box tests of the leased Redis bulkhead shared by replicas, of the breaker
//! quorum, and of both inside a Tidewall pipeline and a tower layer, written from the public
//! docs only: seeded random cancellations and task aborts, holders counted by the test across
//! replicas, server faults while permits are held, and extreme configurations.
//!
//! Each test quotes the doc sentence it checks. A permit leaked by a test would come back only
//! when its lease expires (30 s here unless said otherwise), far past the 10 s `eventually`
//! polls for: so "the whole limit is free again" means nothing leaked, not that it healed.

mod common;

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use common::{RedisServer, eventually, whole_limit_free};
use tidewall::admission::{Admission, NoWait, Wait};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::pipeline::Pipeline;
use tidewall::rt::Tokio;
use tidewall::tower::{AdmitLayer, AdmitMode};
use tidewall::{Backoff, ConfigError, Deadline, Error, Rejected};
use tidewall_core::rng::SplitMix64;
use tidewall_redis::{
    BreakerQuorum, ConnectError, QuorumUnavailable, RedisBulkhead, RedisConn, RedisPermit,
    WhenUnavailable,
};
use tower::{Service, ServiceExt};

/// Long enough that a leaked lease cannot heal within `eventually`'s 10 s.
const LONG_LEASE: Duration = Duration::from_secs(30);
/// Slack over a documented time bound, for a loaded 2-core host.
const SLACK: Duration = Duration::from_millis(750);
/// 2^50 µs: the longest lease the docs allow.
const MAX_LEASE_MICROS: u64 = 1 << 50;

fn conn(server: &RedisServer) -> RedisConn {
    RedisConn::open(server.url()).unwrap()
}

fn replica_with(
    server: &RedisServer,
    name: &str,
    limit: u32,
    lease: Duration,
    deadline: Duration,
    policy: WhenUnavailable,
) -> RedisBulkhead {
    RedisBulkhead::builder(&conn(server), name, limit)
        .lease(lease)
        .deadline(deadline)
        .when_unavailable(policy)
        .build()
        .unwrap()
}

/// A replica of its own (its own connection), failing closed, with a 2 s deadline per call.
fn replica(server: &RedisServer, name: &str, limit: u32) -> RedisBulkhead {
    replica_with(
        server,
        name,
        limit,
        LONG_LEASE,
        Duration::from_secs(2),
        WhenUnavailable::Closed,
    )
}

/// Every lease gone from the sorted set: released, not expired (the lease is 30 s).
async fn no_leases_left(server: &RedisServer, key: &str) {
    eventually(async || (server.zcard(key) == 0).then_some(())).await;
}

fn micros(us: u64) -> Duration {
    Duration::from_micros(us)
}

fn after(budget: Duration) -> Deadline {
    Deadline::after(&Tokio, budget)
}

/// Polls `future` once, then up to `polls` more times (woken at once), and drops it if it has
/// not finished: a cancellation right after the request left.
async fn poll_then_drop<F: Future>(future: F, polls: u64) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut left = polls;
    std::future::poll_fn(move |cx| match future.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending if left == 0 => Poll::Ready(None),
        Poll::Pending => {
            left -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// Holders counted by the test itself, across every replica.
#[derive(Clone, Default)]
struct Tally {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

/// One counted holder; uncounted when dropped (before the permit it guards is released).
struct Inside(Tally);

impl Tally {
    fn enter(&self) -> Inside {
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.max.fetch_max(now, SeqCst);
        Inside(self.clone())
    }

    fn max(&self) -> usize {
        self.max.load(SeqCst)
    }

    fn now(&self) -> usize {
        self.now.load(SeqCst)
    }

    /// A shared permit, counted while held. Fields drop in order: uncounted first, then the
    /// permit is released, so the counted interval is inside the lease's life in Redis.
    fn hold(&self, permit: RedisPermit) -> Held {
        assert!(
            permit.is_shared(),
            "a closed bulkhead gave a non-shared permit"
        );
        Held {
            _inside: self.enter(),
            _permit: permit,
        }
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, SeqCst);
    }
}

struct Held {
    _inside: Inside,
    _permit: RedisPermit,
}

/// Samples `ZCARD key` every millisecond on a thread of its own, until stopped: the most
/// leases the sorted set ever held.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Sampler {
    fn start(server: &RedisServer, key: &str) -> Self {
        let mut admin = server.admin().unwrap();
        let key = key.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut max = 0;
            while !stopped.load(SeqCst) {
                let n: u64 = redis::cmd("ZCARD").arg(&key).query(&mut admin).unwrap();
                max = max.max(n);
                std::thread::sleep(Duration::from_millis(1));
            }
            max
        });
        Self { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, SeqCst);
        self.thread.join().unwrap()
    }
}

fn is_expected_refusal(rejected: Rejected) -> bool {
    matches!(
        rejected,
        Rejected::BulkheadFull | Rejected::DeadlineExceeded
    )
}

// ---------------------------------------------------------------------------------------------
// Configuration extremes
// ---------------------------------------------------------------------------------------------

/// `RedisBulkheadBuilder::build`: "A zero limit, lease or deadline, a lease under 3 ms
/// (renewed every third) or over 2^50 µs, a deadline beyond `u64::MAX` nanoseconds, a local
/// share outside (0, 1], an empty name." Each is an `Err`, never a panic or a wrapped value.
#[tokio::test]
async fn bulkhead_builder_refuses_every_documented_bad_setting_with_an_error() {
    let conn = RedisConn::open("redis://127.0.0.1:1").unwrap();
    let base = || RedisBulkhead::builder(&conn, "cfg", 4);
    let cases: Vec<(&str, Result<RedisBulkhead, ConfigError>)> = vec![
        ("limit 0", RedisBulkhead::builder(&conn, "cfg", 0).build()),
        ("lease 0", base().lease(Duration::ZERO).build()),
        ("lease 1 ns", base().lease(Duration::from_nanos(1)).build()),
        (
            "lease 2.999999 ms",
            base().lease(Duration::from_nanos(2_999_999)).build(),
        ),
        ("lease 2 ms", base().lease(Duration::from_millis(2)).build()),
        (
            "lease 2^50 µs + 1 µs",
            base().lease(micros(MAX_LEASE_MICROS + 1)).build(),
        ),
        (
            "lease 2^51 µs",
            base().lease(micros(MAX_LEASE_MICROS * 2)).build(),
        ),
        (
            "lease u64::MAX ns",
            base().lease(Duration::from_nanos(u64::MAX)).build(),
        ),
        ("lease Duration::MAX", base().lease(Duration::MAX).build()),
        ("deadline 0", base().deadline(Duration::ZERO).build()),
        (
            "deadline u64::MAX ns + 1 ns",
            base()
                .deadline(Duration::from_nanos(u64::MAX) + Duration::from_nanos(1))
                .build(),
        ),
        (
            "deadline Duration::MAX",
            base().deadline(Duration::MAX).build(),
        ),
        (
            "share 0",
            base()
                .when_unavailable(WhenUnavailable::Local { share: 0.0 })
                .build(),
        ),
        (
            "share -0",
            base()
                .when_unavailable(WhenUnavailable::Local { share: -0.0 })
                .build(),
        ),
        (
            "share -0.5",
            base()
                .when_unavailable(WhenUnavailable::Local { share: -0.5 })
                .build(),
        ),
        (
            "share 1 + ε",
            base()
                .when_unavailable(WhenUnavailable::Local {
                    share: 1.0 + f64::EPSILON,
                })
                .build(),
        ),
        (
            "share NaN",
            base()
                .when_unavailable(WhenUnavailable::Local { share: f64::NAN })
                .build(),
        ),
        (
            "share +inf",
            base()
                .when_unavailable(WhenUnavailable::Local {
                    share: f64::INFINITY,
                })
                .build(),
        ),
        (
            "share -inf",
            base()
                .when_unavailable(WhenUnavailable::Local {
                    share: f64::NEG_INFINITY,
                })
                .build(),
        ),
        ("empty name", RedisBulkhead::builder(&conn, "", 4).build()),
    ];
    for (what, built) in cases {
        assert!(built.is_err(), "{what}: built {built:?}");
    }
}

/// The same docs, their edges from the other side: "From 3 ms ... to 2^50 µs" for the lease,
/// a deadline of exactly `u64::MAX` ns, a share of exactly 1 and the smallest positive share
/// (inside (0, 1]), a limit of 1 and of `u32::MAX`. All build.
#[tokio::test]
async fn bulkhead_builder_accepts_every_documented_edge() {
    let conn = RedisConn::open("redis://127.0.0.1:1").unwrap();
    let cases: Vec<(&str, Result<RedisBulkhead, ConfigError>)> = vec![
        ("limit 1", RedisBulkhead::builder(&conn, "cfg", 1).build()),
        (
            "limit u32::MAX",
            RedisBulkhead::builder(&conn, "cfg", u32::MAX).build(),
        ),
        (
            "limit u32::MAX, local share 1",
            RedisBulkhead::builder(&conn, "cfg", u32::MAX)
                .when_unavailable(WhenUnavailable::Local { share: 1.0 })
                .build(),
        ),
        (
            "limit 1, smallest positive share",
            RedisBulkhead::builder(&conn, "cfg", 1)
                .when_unavailable(WhenUnavailable::Local {
                    share: f64::MIN_POSITIVE,
                })
                .build(),
        ),
        (
            "lease 3 ms",
            RedisBulkhead::builder(&conn, "cfg", 1)
                .lease(Duration::from_millis(3))
                .build(),
        ),
        (
            "lease 2^50 µs",
            RedisBulkhead::builder(&conn, "cfg", 1)
                .lease(micros(MAX_LEASE_MICROS))
                .build(),
        ),
        (
            "deadline u64::MAX ns",
            RedisBulkhead::builder(&conn, "cfg", 1)
                .deadline(Duration::from_nanos(u64::MAX))
                .build(),
        ),
        (
            "deadline 1 ns",
            RedisBulkhead::builder(&conn, "cfg", 1)
                .deadline(Duration::from_nanos(1))
                .build(),
        ),
    ];
    for (what, built) in cases {
        assert!(built.is_ok(), "{what}: {:?}", built.err());
    }
}

/// "At most `limit` calls at once across every replica": with `u32::MAX` nothing wraps, every
/// permit is a lease, and they all go back on drop ("released in the background when
/// dropped").
#[tokio::test]
async fn a_limit_of_u32_max_admits_shared_leases_and_releases_them() {
    let server = RedisServer::start();
    let bulkhead = replica(&server, "huge", u32::MAX);
    let mut held = Vec::new();
    for _ in 0..64 {
        let permit = bulkhead.try_acquire().await.unwrap();
        assert!(permit.is_shared());
        held.push(permit);
    }
    assert_eq!(server.zcard(bulkhead.key()), 64);
    drop(held);
    no_leases_left(&server, bulkhead.key()).await;
}

/// `lease`: "From 3 ms (it is renewed every third) to 2^50 µs (about 35 years: the scripts add
/// it to Redis's clock in Lua doubles)". The longest lease must still be a lease that counts
/// against the limit (not reaped as expired by a wrapped score) and is released on drop; the
/// shortest must work at all.
#[tokio::test]
async fn the_longest_and_shortest_leases_work_end_to_end() {
    let server = RedisServer::start();
    let longest = replica_with(
        &server,
        "longest",
        1,
        micros(MAX_LEASE_MICROS),
        Duration::from_secs(2),
        WhenUnavailable::Closed,
    );
    let other = replica_with(
        &server,
        "longest",
        1,
        micros(MAX_LEASE_MICROS),
        Duration::from_secs(2),
        WhenUnavailable::Closed,
    );
    let permit = longest.try_acquire().await.unwrap();
    assert!(permit.is_shared());
    assert_eq!(
        other.try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
    drop(permit);
    // Only a release frees it: expiry is 35 years away.
    let again = eventually(async || other.try_acquire().await.ok()).await;
    assert!(again.is_shared());
    drop(again);
    no_leases_left(&server, other.key()).await;

    let shortest = replica_with(
        &server,
        "shortest",
        2,
        Duration::from_millis(3),
        Duration::from_secs(2),
        WhenUnavailable::Closed,
    );
    for _ in 0..20 {
        let permit = shortest.try_acquire().await.unwrap();
        assert!(permit.is_shared());
        tokio::time::sleep(Duration::from_millis(2)).await;
        drop(permit);
    }
    no_leases_left(&server, shortest.key()).await;
}

// ---------------------------------------------------------------------------------------------
// Permits never lost, limit never exceeded
// ---------------------------------------------------------------------------------------------

/// One replica task: seeded random ways to ask and to give up.
async fn churn(bulkhead: RedisBulkhead, seed: u64, rounds: u32, tally: Tally) -> Vec<Rejected> {
    let mut rng = SplitMix64::new(seed);
    let mut unexpected = Vec::new();
    for _ in 0..rounds {
        let hold = micros(rng.below_or_equal(3_000));
        let got: Option<Result<RedisPermit, Rejected>> = match rng.below_or_equal(5) {
            // Dropped right after the request left.
            0 => poll_then_drop(bulkhead.try_acquire(), rng.below_or_equal(3)).await,
            // Cut by a timeout at a random point of the round trip.
            1 => tokio::time::timeout(micros(rng.below_or_equal(2_000)), bulkhead.try_acquire())
                .await
                .ok(),
            // Waits for a slot until a short deadline.
            2 => Some(
                bulkhead
                    .acquire_before(after(micros(rng.below_or_equal(20_000))))
                    .await,
            ),
            // Waits without a deadline, cut by a timeout.
            3 => tokio::time::timeout(
                micros(rng.below_or_equal(20_000)),
                bulkhead.acquire_before(Deadline::none()),
            )
            .await
            .ok(),
            // Waits through the `Admission` trait, cut right after it left.
            4 => {
                poll_then_drop(
                    bulkhead.admit(Wait::Until(after(Duration::from_millis(15)))),
                    rng.below_or_equal(5),
                )
                .await
            }
            _ => Some(bulkhead.try_acquire().await),
        };
        match got {
            Some(Ok(permit)) => {
                let held = tally.hold(permit);
                // The hold itself may be cut short too.
                if rng.below_or_equal(3) == 0 {
                    drop(held);
                } else {
                    tokio::time::sleep(hold).await;
                    drop(held);
                }
            }
            Some(Err(rejected)) if !is_expected_refusal(rejected) => unexpected.push(rejected),
            Some(Err(_)) | None => {}
        }
    }
    unexpected
}

/// The struct docs: "At most `limit` calls at once across every replica ... released in the
/// background when dropped"; `try_acquire`'s cancel safety: "dropping the future (or a
/// timeout) after the request left releases the lease Redis may have granted meanwhile";
/// `Admission::admit`: "dropping the future releases whatever it was waiting for or held;
/// nothing is taken from the stage". Four replicas, 24 tasks, seeded cancellations: holders
/// counted by the test and the sorted set sampled never pass the limit, and afterwards every
/// lease is gone and the whole limit is free (the lease is 30 s: nothing heals by expiry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_cancellations_across_four_replicas_neither_exceed_nor_lose_the_limit() {
    churn_replicas(3, 4, 6, 0x5eed_0000).await;
}

/// As above, at a limit of 1 shared by six replicas: every lost lease blocks everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_cancellations_across_six_replicas_keep_a_limit_of_one() {
    churn_replicas(1, 6, 3, 0x0000_0001_5eed).await;
}

async fn churn_replicas(limit: u32, replicas: usize, tasks_each: u64, seed: u64) {
    let server = RedisServer::start();
    let name = format!("churn-{limit}");
    let replicas: Vec<_> = (0..replicas)
        .map(|_| replica(&server, &name, limit))
        .collect();
    let key = replicas[0].key().to_owned();
    let sampler = Sampler::start(&server, &key);
    let tally = Tally::default();
    let mut tasks = Vec::new();
    for (i, bulkhead) in replicas.iter().enumerate() {
        for j in 0..tasks_each {
            let seed = seed + u64::try_from(i).unwrap() * 100 + j;
            tasks.push(tokio::spawn(churn(
                bulkhead.clone(),
                seed,
                40,
                tally.clone(),
            )));
        }
    }
    let mut unexpected = Vec::new();
    for task in tasks {
        unexpected.extend(task.await.unwrap());
    }
    let most_leases = sampler.stop();
    let limit_usize = usize::try_from(limit).unwrap();
    assert!(
        unexpected.is_empty(),
        "refusals other than full/deadline on a healthy Redis: {unexpected:?}"
    );
    assert!(
        tally.max() <= limit_usize,
        "{} holders at once",
        tally.max()
    );
    assert!(tally.max() >= 1, "the test never held a permit");
    assert!(
        most_leases <= u64::from(limit),
        "the sorted set held {most_leases} leases, limit {limit}"
    );
    no_leases_left(&server, &key).await;
    for bulkhead in &replicas {
        whole_limit_free(bulkhead, limit_usize).await;
    }
}

/// A worker that asks and holds forever, until aborted at any point.
async fn worker(bulkhead: RedisBulkhead, seed: u64, tally: Tally) {
    let mut rng = SplitMix64::new(seed);
    loop {
        let got = if rng.below_or_equal(1) == 0 {
            bulkhead.acquire_before(Deadline::none()).await
        } else {
            bulkhead.try_acquire().await
        };
        match got {
            Ok(permit) => {
                let _held = tally.hold(permit);
                tokio::time::sleep(micros(rng.below_or_equal(5_000))).await;
            }
            Err(rejected) => {
                assert!(is_expected_refusal(rejected), "refused with {rejected:?}");
                tokio::task::yield_now().await;
            }
        }
    }
}

/// `try_acquire`/`acquire_before` cancel safety ("dropping the future ... releases the lease
/// Redis may have granted meanwhile") and `RedisPermit`: "Dropping it releases the slot".
/// Tasks aborted at seeded random points (waiting, mid round trip, holding) give back every
/// permit, and the limit holds meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_aborted_at_seeded_random_points_give_every_permit_back() {
    const LIMIT: usize = 2;
    let server = RedisServer::start();
    let replicas: Vec<_> = (0..3).map(|_| replica(&server, "aborts", 2)).collect();
    let key = replicas[0].key().to_owned();
    let tally = Tally::default();
    let mut rng = SplitMix64::new(0xAB0_47ED);
    let spawn = |n: u64, tally: &Tally| {
        let bulkhead = replicas[usize::try_from(n % 3).unwrap()].clone();
        tokio::spawn(worker(bulkhead, n, tally.clone()))
    };
    let mut tasks: Vec<_> = (0..9).map(|n| spawn(n, &tally)).collect();
    for n in 9..80 {
        tokio::time::sleep(micros(rng.below_or_equal(12_000))).await;
        let victim = usize::try_from(rng.below_or_equal(8)).unwrap();
        tasks[victim].abort();
        tasks[victim] = spawn(n, &tally);
    }
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let ended = task.await;
        assert!(
            ended
                .as_ref()
                .err()
                .is_some_and(tokio::task::JoinError::is_cancelled),
            "a worker panicked: {ended:?}"
        );
    }
    assert!(tally.max() <= LIMIT, "{} holders at once", tally.max());
    assert_eq!(tally.now(), 0);
    no_leases_left(&server, &key).await;
    for bulkhead in &replicas {
        whole_limit_free(bulkhead, LIMIT).await;
    }
}

/// "Each permit is a lease in a sorted set: renewed in the background while held (every third
/// of the lease)". With a 300 ms lease and holds of 350–800 ms, a renewal that failed would let
/// a waiting replica in while the holder still holds: the test's count would pass the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_longer_than_the_lease_never_let_a_third_holder_in() {
    const LIMIT: usize = 2;
    let server = RedisServer::start();
    let lease = Duration::from_millis(300);
    let replicas: Vec<_> = (0..3)
        .map(|_| {
            replica_with(
                &server,
                "renew",
                2,
                lease,
                Duration::from_secs(2),
                WhenUnavailable::Closed,
            )
        })
        .collect();
    let tally = Tally::default();
    let mut tasks = Vec::new();
    for (i, bulkhead) in replicas.iter().enumerate() {
        for j in 0..3u64 {
            let bulkhead = bulkhead.clone();
            let tally = tally.clone();
            let mut rng = SplitMix64::new(u64::try_from(i).unwrap() * 10 + j);
            tasks.push(tokio::spawn(async move {
                let permit = bulkhead.acquire_before(Deadline::none()).await.unwrap();
                let _held = tally.hold(permit);
                tokio::time::sleep(Duration::from_millis(rng.between(350, 800))).await;
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(tally.max() <= LIMIT, "{} holders at once", tally.max());
    for bulkhead in &replicas {
        whole_limit_free(bulkhead, LIMIT).await;
    }
}

/// "A holder that crashes stops renewing, and its permit returns when the lease expires", and
/// the permit's lease task: "none outside a tokio runtime: the lease then lapses after its
/// term"; the release: "Without a runtime, or if Redis stays away, the lease expires on its
/// own." A holder whose runtime died, and a permit dropped outside any runtime: no panic, and
/// both slots are back about a lease later.
#[test]
fn holders_whose_runtime_is_gone_never_panic_and_their_slots_return_by_expiry() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(300);
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (crashed, orphan) = first.block_on(async {
        let bulkhead = replica_with(
            &server,
            "crash",
            2,
            lease,
            Duration::from_secs(2),
            WhenUnavailable::Closed,
        );
        let crashed = bulkhead.try_acquire().await.unwrap();
        let orphan = bulkhead.try_acquire().await.unwrap();
        assert!(crashed.is_shared() && orphan.is_shared());
        assert_eq!(
            bulkhead.try_acquire().await.err(),
            Some(Rejected::BulkheadFull)
        );
        (crashed, orphan)
    });
    drop(first);
    // A crashed holder never runs its drop.
    std::mem::forget(crashed);
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(orphan)));
    assert!(
        dropped.is_ok(),
        "dropping a permit outside any runtime panicked"
    );
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    second.block_on(async {
        let started = Instant::now();
        let bulkhead = replica_with(
            &server,
            "crash",
            2,
            lease,
            Duration::from_secs(2),
            WhenUnavailable::Closed,
        );
        whole_limit_free(&bulkhead, 2).await;
        assert!(
            started.elapsed() < lease + SLACK * 2,
            "slots back only after {:?}",
            started.elapsed()
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Server faults while permits are held
// ---------------------------------------------------------------------------------------------

/// The crate docs: "no decision ever waits longer than its deadline, whatever Redis does";
/// `WhenUnavailable::Closed`: "Refuse with `Rejected::BackendUnavailable`"; the release: "outside
/// the breaker ... within one second, once more if that fails". A frozen Redis: each acquire
/// is refused with the typed error within its deadline; a permit dropped while Redis is frozen
/// is released once it thaws (30 s lease: not by expiry).
#[tokio::test]
async fn a_frozen_redis_is_refused_in_time_and_a_release_made_meanwhile_lands() {
    let server = RedisServer::start();
    let deadline = Duration::from_millis(50);
    let bulkhead = replica_with(
        &server,
        "frozen",
        2,
        LONG_LEASE,
        deadline,
        WhenUnavailable::Closed,
    );
    let held = eventually(async || bulkhead.try_acquire().await.ok()).await;
    assert!(held.is_shared());
    server.freeze();
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(
            bulkhead.try_acquire().await.err(),
            Some(Rejected::BackendUnavailable)
        );
        assert!(
            started.elapsed() < deadline + SLACK,
            "took {:?}",
            started.elapsed()
        );
    }
    // `acquire_before` under a frozen Redis also ends by its deadline, refused.
    let started = Instant::now();
    let waited = bulkhead
        .acquire_before(after(Duration::from_millis(300)))
        .await;
    assert!(
        matches!(
            waited,
            Err(Rejected::BackendUnavailable | Rejected::DeadlineExceeded)
        ),
        "{waited:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(300) + SLACK);
    drop(held);
    // Leave the release in flight while Redis is frozen (a fault window, not a sync point).
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.thaw();
    whole_limit_free(&replica(&server, "frozen", 2), 2).await;
    no_leases_left(&server, bulkhead.key()).await;
}

/// `acquire_before`: "`Rejected::DeadlineExceeded` when no slot came free in time, or Redis
/// has not answered by the deadline; otherwise as `try_acquire`"; `try_acquire`: "
/// `Rejected::BackendUnavailable` when Redis did not answer and the policy is to fail closed".
/// Without a deadline of its own, the first reading leaves only `BackendUnavailable`: a
/// waiter with no deadline on a frozen Redis must not wait forever.
#[tokio::test]
async fn acquire_before_without_a_deadline_on_a_frozen_redis_fails_closed() {
    let server = RedisServer::start();
    let bulkhead = replica_with(
        &server,
        "frozen-none",
        1,
        LONG_LEASE,
        Duration::from_millis(50),
        WhenUnavailable::Closed,
    );
    drop(eventually(async || bulkhead.try_acquire().await.ok()).await);
    server.freeze();
    let waited = tokio::time::timeout(
        Duration::from_secs(3),
        bulkhead.acquire_before(Deadline::none()),
    )
    .await;
    server.thaw();
    assert_eq!(
        waited.map(|r| r.err()),
        Ok(Some(Rejected::BackendUnavailable)),
        "Ok(..) is an answer; Err(Elapsed) means it kept waiting past 3 s"
    );
    whole_limit_free(&replica(&server, "frozen-none", 1), 1).await;
}

/// Killed and restarted (its data gone) while two of three permits are held: acquires are
/// refused with the typed error in time, none panics; once back, the full limit is acquirable
/// although the stale permits are still held, and the stale holders' renewal ("until ... the
/// lease is found gone") never writes their leases back (`Extends a lease that is still held`).
#[tokio::test]
async fn a_restart_while_permits_are_held_gives_the_full_limit_and_stale_renewals_stay_out() {
    let mut server = RedisServer::start();
    let lease = Duration::from_millis(600);
    let deadline = Duration::from_millis(200);
    let a = replica_with(
        &server,
        "restart",
        3,
        lease,
        deadline,
        WhenUnavailable::Closed,
    );
    let b = replica_with(
        &server,
        "restart",
        3,
        lease,
        deadline,
        WhenUnavailable::Closed,
    );
    let stale = [
        a.try_acquire().await.unwrap(),
        b.try_acquire().await.unwrap(),
    ];
    server.kill();
    for bulkhead in [&a, &b] {
        for _ in 0..3 {
            let started = Instant::now();
            assert_eq!(
                bulkhead.try_acquire().await.err(),
                Some(Rejected::BackendUnavailable)
            );
            assert!(
                started.elapsed() < deadline + SLACK,
                "took {:?}",
                started.elapsed()
            );
        }
    }
    server.restart();
    let mut fresh = Vec::new();
    eventually(async || {
        if let Ok(permit) = a.try_acquire().await {
            assert!(permit.is_shared());
            fresh.push(permit);
        }
        (fresh.len() == 3).then_some(())
    })
    .await;
    // Several renewal periods of the stale permits (every 200 ms): none may come back.
    tokio::time::sleep(lease * 2).await;
    assert_eq!(server.zcard(a.key()), 3, "stale leases written back");
    assert_eq!(b.try_acquire().await.err(), Some(Rejected::BulkheadFull));
    drop(stale);
    drop(fresh);
    no_leases_left(&server, a.key()).await;
    whole_limit_free(&b, 3).await;
}

/// `WhenUnavailable::Open`: "Admit: availability over the limit"; `is_shared`: "Whether the
/// slot is a Redis lease (not the local fallback, nor fail-open)". With Redis dead, the
/// default policy admits at once with non-shared permits, over the limit; once Redis is back,
/// dropping them touches nothing and the limit is whole.
#[tokio::test]
async fn fail_open_admits_non_shared_permits_over_the_limit_and_leaves_no_trace() {
    let mut server = RedisServer::start();
    let deadline = Duration::from_millis(100);
    let open = RedisBulkhead::builder(&conn(&server), "open", 1)
        .deadline(deadline)
        .build()
        .unwrap();
    drop(eventually(async || open.try_acquire().await.ok().filter(RedisPermit::is_shared)).await);
    server.kill();
    let mut admitted = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let permit = open.try_acquire().await.unwrap();
        assert!(!permit.is_shared());
        assert!(started.elapsed() < deadline + SLACK);
        admitted.push(permit);
    }
    let waited = open.acquire_before(after(Duration::from_millis(300))).await;
    assert!(waited.is_ok_and(|p| !p.is_shared()));
    server.restart();
    let shared =
        eventually(async || open.try_acquire().await.ok().filter(RedisPermit::is_shared)).await;
    drop(admitted);
    drop(shared);
    no_leases_left(&server, open.key()).await;
    whole_limit_free(&replica(&server, "open", 1), 1).await;
}

/// The struct docs: "`Local` uses an in-process bulkhead holding its share of the limit";
/// `WhenUnavailable::Local`: "Decide with an in-process limiter holding `share` (0 < share ≤ 1)
/// of the global limit". Half of 4 is 2 local slots, a dropped local permit frees its slot at
/// once, and the permits are not shared. The smallest positive share must not panic.
#[tokio::test]
async fn the_local_fallback_holds_exactly_its_share_and_gives_slots_back() {
    let server = RedisServer::start();
    let deadline = Duration::from_millis(30);
    let local = replica_with(
        &server,
        "local",
        4,
        LONG_LEASE,
        deadline,
        WhenUnavailable::Local { share: 0.5 },
    );
    let tiny = replica_with(
        &server,
        "tiny",
        1,
        LONG_LEASE,
        deadline,
        WhenUnavailable::Local {
            share: f64::MIN_POSITIVE,
        },
    );
    drop(
        eventually(async || {
            local
                .try_acquire()
                .await
                .ok()
                .filter(RedisPermit::is_shared)
        })
        .await,
    );
    drop(eventually(async || tiny.try_acquire().await.ok().filter(RedisPermit::is_shared)).await);
    server.freeze();
    let first = local.try_acquire().await.unwrap();
    let second = local.try_acquire().await.unwrap();
    assert!(!first.is_shared() && !second.is_shared());
    assert_eq!(
        local.try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
    drop(first);
    let third = local.try_acquire().await.unwrap();
    assert!(!third.is_shared());
    assert_eq!(
        local.try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
    // A share of 1 × 2^-1022 of 1: either no slot or one, never a panic.
    let from_tiny = tiny.try_acquire().await;
    assert!(
        matches!(&from_tiny, Ok(p) if !p.is_shared())
            || from_tiny.as_ref().err() == Some(&Rejected::BulkheadFull),
        "{from_tiny:?}"
    );
    server.thaw();
    let shared = eventually(async || {
        local
            .try_acquire()
            .await
            .ok()
            .filter(RedisPermit::is_shared)
    })
    .await;
    drop((second, third, shared, from_tiny));
    no_leases_left(&server, local.key()).await;
    whole_limit_free(&replica(&server, "local", 4), 4).await;
}

/// `try_acquire`'s cancel safety: "dropping the future (or a timeout) after the request left
/// releases the lease Redis may have granted meanwhile: a `ZREM` follows the acquire on the
/// same connection, so Redis runs it second". Against a paused Redis every acquire times out
/// (refused in time, typed) or is dropped after its first polls; Redis runs them all when the
/// pause ends, and no lease stays behind (limit 1: one leak blocks everything).
#[tokio::test]
async fn acquires_that_time_out_against_a_paused_redis_leave_no_lease() {
    let server = RedisServer::start();
    let deadline = Duration::from_millis(20);
    let bulkhead = replica_with(
        &server,
        "paused",
        1,
        LONG_LEASE,
        deadline,
        WhenUnavailable::Closed,
    );
    drop(eventually(async || bulkhead.try_acquire().await.ok()).await);
    no_leases_left(&server, bulkhead.key()).await;
    server.pause_clients(Duration::from_millis(600));
    let mut rng = SplitMix64::new(0x9A05E);
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(
            bulkhead.try_acquire().await.err(),
            Some(Rejected::BackendUnavailable)
        );
        assert!(started.elapsed() < deadline + SLACK);
        let dropped = poll_then_drop(bulkhead.try_acquire(), rng.below_or_equal(4)).await;
        assert!(
            dropped.is_none_or(|r| r.is_err()),
            "admitted by a paused Redis"
        );
    }
    whole_limit_free(&replica(&server, "paused", 1), 1).await;
    no_leases_left(&server, bulkhead.key()).await;
}

/// `Unavailable::CallerDeadline`: "The caller's own deadline (shorter than the limit's) passed
/// first: nothing is known about Redis, and the caller is told `Rejected::DeadlineExceeded`";
/// `acquire_before`: "Redis has not answered by the deadline (then a lease it may have granted
/// is released)".
#[tokio::test]
async fn a_caller_deadline_shorter_than_redis_is_deadline_exceeded_and_leaks_nothing() {
    let server = RedisServer::start();
    let bulkhead = replica(&server, "caller", 1);
    drop(eventually(async || bulkhead.try_acquire().await.ok()).await);
    no_leases_left(&server, bulkhead.key()).await;
    server.pause_clients(Duration::from_millis(700));
    for _ in 0..3 {
        let started = Instant::now();
        let waited = bulkhead
            .acquire_before(after(Duration::from_millis(100)))
            .await;
        assert_eq!(waited.err(), Some(Rejected::DeadlineExceeded));
        assert!(
            started.elapsed() < Duration::from_millis(100) + SLACK,
            "took {:?}",
            started.elapsed()
        );
    }
    whole_limit_free(&bulkhead, 1).await;
    no_leases_left(&server, bulkhead.key()).await;
}

/// The release: "Removes `member`'s lease in the background ... outside the breaker (a release
/// is worth trying even when Redis looked down)". Many timeouts against a frozen Redis (which
/// may open the breaker around it); then a permit dropped just after Redis thaws is still
/// released (30 s lease: it cannot heal by expiry within the 10 s poll).
#[tokio::test]
async fn a_permit_dropped_while_redis_looked_down_is_still_released() {
    let server = RedisServer::start();
    let bulkhead = replica_with(
        &server,
        "looked-down",
        1,
        LONG_LEASE,
        Duration::from_millis(5),
        WhenUnavailable::Closed,
    );
    let held = eventually(async || bulkhead.try_acquire().await.ok()).await;
    server.freeze();
    for _ in 0..40 {
        assert_eq!(
            bulkhead.try_acquire().await.err(),
            Some(Rejected::BackendUnavailable)
        );
    }
    server.thaw();
    drop(held);
    no_leases_left(&server, bulkhead.key()).await;
    whole_limit_free(&replica(&server, "looked-down", 1), 1).await;
}

// ---------------------------------------------------------------------------------------------
// acquire_before
// ---------------------------------------------------------------------------------------------

/// `acquire_before`: "Tries for a slot until `deadline`, asking again every few milliseconds"
/// and "`Rejected::DeadlineExceeded` when no slot came free in time". It neither gives up long
/// before the deadline nor overruns it; and a slot another replica frees meanwhile is taken.
#[tokio::test]
async fn acquire_before_waits_to_its_deadline_and_takes_a_slot_freed_by_another_replica() {
    let server = RedisServer::start();
    let holder = replica(&server, "before", 1);
    let waiter = replica(&server, "before", 1);
    let held = holder.try_acquire().await.unwrap();
    let started = Instant::now();
    let waited = waiter
        .acquire_before(after(Duration::from_millis(300)))
        .await;
    let took = started.elapsed();
    assert_eq!(waited.err(), Some(Rejected::DeadlineExceeded));
    assert!(took >= Duration::from_millis(250), "gave up after {took:?}");
    assert!(
        took < Duration::from_millis(300) + SLACK,
        "overran: {took:?}"
    );

    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(held);
    });
    let started = Instant::now();
    let permit = waiter
        .acquire_before(after(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(permit.is_shared());
    assert!(started.elapsed() < Duration::from_secs(5));
    release.await.unwrap();
    assert_eq!(
        holder.try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
}

/// `acquire_before`'s cancel safety: "as `try_acquire`". Waiters with no deadline on a full
/// limit, cancelled at seeded random moments, take nothing: once the holder lets go the whole
/// limit is free.
#[tokio::test]
async fn waiters_cancelled_at_random_moments_take_nothing() {
    let server = RedisServer::start();
    let holder = replica(&server, "waiters", 2);
    let waiters = [
        replica(&server, "waiters", 2),
        replica(&server, "waiters", 2),
    ];
    let held = [
        holder.try_acquire().await.unwrap(),
        holder.try_acquire().await.unwrap(),
    ];
    let mut rng = SplitMix64::new(0x3A17);
    let mut tasks = Vec::new();
    for i in 0..8usize {
        let bulkhead = waiters[i % 2].clone();
        let cut = micros(rng.below_or_equal(150_000));
        tasks.push(tokio::spawn(async move {
            tokio::time::timeout(cut, bulkhead.acquire_before(Deadline::none()))
                .await
                .is_err()
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap(), "a waiter got a slot of a full limit");
    }
    drop(held);
    no_leases_left(&server, holder.key()).await;
    whole_limit_free(&waiters[0], 2).await;
}

// ---------------------------------------------------------------------------------------------
// The Admission trait, a pipeline, a tower layer
// ---------------------------------------------------------------------------------------------

/// `Admission for RedisBulkhead`: "Never decides without Redis: `admit` does the round trip";
/// "Under `Wait::No` one round trip (`try_acquire`), under `Wait::Until` `acquire_before`";
/// `Admission`: "Guards and futures own what they need (`'static`)". An `admit` future and a
/// permit outliving every handle still work and release.
#[tokio::test]
async fn the_admission_stage_round_trips_and_its_future_outlives_the_handle() {
    let server = RedisServer::start();
    let bulkhead = replica(&server, "admission", 1);
    assert!(bulkhead.try_admit().is_none(), "decided without Redis");
    let pending = bulkhead.admit(Wait::No);
    let key = bulkhead.key().to_owned();
    drop(bulkhead);
    let permit = pending.await.unwrap();
    assert!(permit.is_shared());
    let other = replica(&server, "admission", 1);
    assert!(
        other.try_admit().is_none(),
        "decided without Redis when full"
    );
    assert_eq!(
        other.admit(Wait::No).await.err(),
        Some(Rejected::BulkheadFull)
    );
    let started = Instant::now();
    assert_eq!(
        other
            .admit(Wait::Until(after(Duration::from_millis(200))))
            .await
            .err(),
        Some(Rejected::DeadlineExceeded)
    );
    assert!(started.elapsed() < Duration::from_millis(200) + SLACK);
    // The guard outlives its bulkhead handle too; `finish` releases it.
    <RedisBulkhead as Admission>::finish(permit, tidewall::breaker::Outcome::Success);
    no_leases_left(&server, &key).await;
    whole_limit_free(&other, 1).await;
}

/// `Pipeline::call`: "Cancel safety: dropping the future releases everything it holds
/// (bulkhead slot, ...)"; `PipelineBuilder::bulkhead`: "Holds a bulkhead slot for the whole
/// call ... or any other `Admission` stage (a distributed bulkhead)". Two pipelines on two
/// replicas, calls cancelled at seeded random points: operations running at once never pass
/// the limit, and every slot comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_calls_cancelled_at_random_points_return_their_slots() {
    const LIMIT: usize = 2;
    let server = RedisServer::start();
    let replicas = [
        replica(&server, "pipeline", 2),
        replica(&server, "pipeline", 2),
    ];
    let pipelines: Vec<_> = replicas
        .iter()
        .map(|bulkhead| {
            Arc::new(
                Pipeline::builder()
                    .deadline(Duration::from_secs(10))
                    .bulkhead(bulkhead.clone())
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    let tally = Tally::default();
    let bad = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..10u64 {
        let pipeline = Arc::clone(&pipelines[usize::try_from(i % 2).unwrap()]);
        let tally = tally.clone();
        let bad = Arc::clone(&bad);
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(0x919E + i);
            for _ in 0..10 {
                let work = micros(rng.below_or_equal(15_000));
                let cut = micros(rng.below_or_equal(25_000));
                let tally = tally.clone();
                let called = tokio::time::timeout(
                    cut,
                    pipeline.call(|| {
                        let tally = tally.clone();
                        async move {
                            let _inside = tally.enter();
                            tokio::time::sleep(work).await;
                            Ok::<_, ()>(())
                        }
                    }),
                )
                .await;
                if let Ok(Err(error)) = called {
                    bad.lock().unwrap().push(format!("{error:?}"));
                }
            }
        }));
    }
    // Some whole tasks are aborted too.
    let mut rng = SplitMix64::new(0xAB0);
    tokio::time::sleep(micros(rng.below_or_equal(50_000))).await;
    tasks[3].abort();
    tasks[8].abort();
    for task in tasks {
        let ended = task.await;
        assert!(
            ended.as_ref().map_or_else(|e| e.is_cancelled(), |()| true),
            "{ended:?}"
        );
    }
    assert!(bad.lock().unwrap().is_empty(), "{:?}", bad.lock().unwrap());
    assert!(tally.max() <= LIMIT, "{} operations at once", tally.max());
    assert!(tally.max() >= 1);
    no_leases_left(&server, replicas[0].key()).await;
    whole_limit_free(&replicas[1], LIMIT).await;
}

/// `PipelineBuilder::bulkhead`: "Holds a bulkhead slot for the whole call, retries included".
/// With a limit of 1, every attempt runs while another replica is refused, the retries take
/// no second slot, and the slot is back after the call.
#[tokio::test]
async fn a_pipeline_holds_one_shared_slot_through_its_retries() {
    let server = RedisServer::start();
    let bulkhead = replica(&server, "retries", 1);
    let other = replica(&server, "retries", 1);
    let pipeline = Pipeline::builder()
        .deadline(Duration::from_secs(5))
        .bulkhead(bulkhead.clone())
        .retry(
            Backoff::constant(Duration::from_millis(30))
                .max_attempts(3)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let refused_meanwhile = Arc::new(AtomicUsize::new(0));
    let answer = pipeline
        .call(|| {
            let attempts = Arc::clone(&attempts);
            let refused = Arc::clone(&refused_meanwhile);
            let other = other.clone();
            async move {
                let n = attempts.fetch_add(1, SeqCst) + 1;
                if other.try_acquire().await.err() == Some(Rejected::BulkheadFull) {
                    refused.fetch_add(1, SeqCst);
                }
                if n < 3 { Err("flaky") } else { Ok(n) }
            }
        })
        .await;
    assert_eq!(answer, Ok(3));
    assert_eq!(
        refused_meanwhile.load(SeqCst),
        3,
        "slot not held on some attempt"
    );
    no_leases_left(&server, bulkhead.key()).await;
    whole_limit_free(&other, 1).await;
}

/// A full Redis bulkhead in a pipeline: `Wait::Until`: "Until the stage admits ... or
/// `deadline` passes (`Rejected::DeadlineExceeded`)"; `NoWait`: "admits at once or refuses with
/// its own reason and hint, as under `Wait::No`, however long the caller would wait ... It wraps
/// any stage (one kept in Redis too)".
#[tokio::test]
async fn a_pipeline_refuses_a_full_redis_bulkhead_per_its_wait() {
    let server = RedisServer::start();
    let holder = replica(&server, "full-pipeline", 1);
    let held = holder.try_acquire().await.unwrap();
    let waiting = Pipeline::builder()
        .deadline(Duration::from_millis(300))
        .bulkhead(replica(&server, "full-pipeline", 1))
        .build()
        .unwrap();
    let started = Instant::now();
    let refused = waiting.call(|| async { Ok::<_, ()>(1) }).await;
    assert_eq!(refused, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert!(started.elapsed() < Duration::from_millis(300) + SLACK);

    let shedding = Pipeline::builder()
        .deadline(Duration::from_secs(60))
        .bulkhead(NoWait(replica(&server, "full-pipeline", 1)))
        .build()
        .unwrap();
    let started = Instant::now();
    let refused = shedding.call(|| async { Ok::<_, ()>(2) }).await;
    assert_eq!(refused, Err(Error::Rejected(Rejected::BulkheadFull)));
    assert!(started.elapsed() < SLACK);
    drop(held);
    assert_eq!(
        eventually(async || shedding.call(|| async { Ok::<_, ()>(3) }).await.ok()).await,
        3
    );
    whole_limit_free(&holder, 1).await;
}

/// `AdmitLayer`: "The stage's guard (a bulkhead slot) is held until the response future
/// completes, or is dropped with it"; the response future: "dropping it drops the pending
/// admission ... or the guard (freeing the slot); nothing is held afterwards". `WaitCall`
/// calls cancelled at seeded random points across two replicas; inner calls at once never pass
/// the limit; `Reject` on a full limit is `BulkheadFull`; `max_wait` ends in
/// `DeadlineExceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_calls_cancelled_at_random_points_return_their_slots() {
    const LIMIT: usize = 2;
    let server = RedisServer::start();
    let replicas = [replica(&server, "tower", 2), replica(&server, "tower", 2)];
    let tally = Tally::default();
    let inner = {
        let tally = tally.clone();
        tower::service_fn(move |work_us: u64| {
            let tally = tally.clone();
            async move {
                let _inside = tally.enter();
                tokio::time::sleep(micros(work_us)).await;
                Ok::<_, Infallible>(work_us)
            }
        })
    };
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let layer = AdmitLayer::new(
            replicas[usize::try_from(i % 2).unwrap()].clone(),
            AdmitMode::WaitCall,
        );
        let mut service = tower::ServiceBuilder::new()
            .layer(layer)
            .map_err(Error::Inner)
            .service(inner.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(0x70E5 + i);
            let mut errors = Vec::new();
            for _ in 0..10 {
                let work = rng.below_or_equal(15_000);
                let cut = micros(rng.below_or_equal(25_000));
                let call = service.ready().await.unwrap().call(work);
                match tokio::time::timeout(cut, call).await {
                    Ok(Ok(echo)) => assert_eq!(echo, work),
                    Ok(Err(error)) => errors.push(format!("{error:?}")),
                    Err(_) => {}
                }
            }
            errors
        }));
    }
    for task in tasks {
        let errors = task.await.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
    }
    assert!(tally.max() <= LIMIT, "{} inner calls at once", tally.max());
    no_leases_left(&server, replicas[0].key()).await;

    // Full: `Reject` refuses with the stage's reason, `WaitCall` with `max_wait` in time.
    let held = [
        replicas[0].try_acquire().await.unwrap(),
        replicas[1].try_acquire().await.unwrap(),
    ];
    let mut shed = tower::ServiceBuilder::new()
        .layer(AdmitLayer::new(replicas[0].clone(), AdmitMode::Reject))
        .map_err(Error::Inner)
        .service(inner.clone());
    let refused = shed.ready().await.unwrap().call(1).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Rejected::BulkheadFull))),
        "{refused:?}"
    );
    let mut bounded = tower::ServiceBuilder::new()
        .layer(
            AdmitLayer::new(replicas[1].clone(), AdmitMode::WaitCall)
                .max_wait(Duration::from_millis(150)),
        )
        .map_err(Error::Inner)
        .service(inner.clone());
    let started = Instant::now();
    let refused = bounded.ready().await.unwrap().call(1).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Rejected::DeadlineExceeded))),
        "{refused:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(150) + SLACK);
    drop(held);
    whole_limit_free(&replicas[1], LIMIT).await;
}

/// `AdmitMode::WaitReady`: "the guard taken there (a bulkhead slot) is held until the call's
/// response future completes"; `AdmitService`: "A clone shares the stage and starts with
/// nothing admitted"; `Admission`: guards "live ... in services between `poll_ready` and
/// `call`". A service made ready then dropped uncalled, a `poll_ready` abandoned while waiting,
/// and a response future dropped mid-call each give the slot back.
#[tokio::test]
async fn tower_wait_ready_gives_the_slot_back_however_it_is_abandoned() {
    let server = RedisServer::start();
    let bulkhead = replica(&server, "ready", 1);
    let other = replica(&server, "ready", 1);
    let hang = tower::service_fn(|_: u32| async {
        std::future::pending::<()>().await;
        Ok::<u32, Infallible>(0)
    });
    let make = || {
        tower::ServiceBuilder::new()
            .layer(AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady))
            .map_err(Error::Inner)
            .service(hang)
    };
    let mut ready = make();
    ready.ready().await.unwrap();
    assert_eq!(
        other.try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
    let mut second = ready.clone();
    assert!(
        tokio::time::timeout(Duration::from_millis(150), second.ready())
            .await
            .is_err(),
        "a second slot of a limit of 1"
    );
    drop(second);
    drop(ready);
    whole_limit_free(&other, 1).await;

    let mut calling = make();
    let call = calling.ready().await.unwrap().call(7);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), call)
            .await
            .is_err()
    );
    drop(calling);
    no_leases_left(&server, bulkhead.key()).await;
    whole_limit_free(&other, 1).await;
}

// ---------------------------------------------------------------------------------------------
// Keys and verify
// ---------------------------------------------------------------------------------------------

/// `keys`: "The name and partition are escaped (`%`, `:`, `{`, `}`), so `("a", "b:c")` and
/// `("a:b", "c")` never share a key, and a brace cannot end the hash tag"; `partition`: "A
/// separate limit under the same name (a tenant, a route): its own key". Names and partitions
/// that read alike once joined are separate limits, each with its own slot.
#[tokio::test]
async fn names_and_partitions_that_read_alike_are_separate_limits() {
    let server = RedisServer::start();
    let conn = conn(&server);
    let pairs = [
        ("a", "b:c"),
        ("a:b", "c"),
        ("a%3Ab", "c"),
        ("a", "b%3Ac"),
        ("a%", "3Ab:c"),
        ("{a", "b}"),
        ("a}", "{b"),
        ("a", "%probe"),
        ("a", "%25probe"),
        ("a", "default"),
    ];
    let limits: Vec<_> = pairs
        .iter()
        .map(|(name, partition)| {
            RedisBulkhead::builder(&conn, name, 1)
                .partition(partition)
                .deadline(Duration::from_secs(2))
                .when_unavailable(WhenUnavailable::Closed)
                .build()
                .unwrap()
        })
        .collect();
    let keys: HashSet<_> = limits.iter().map(RedisBulkhead::key).collect();
    assert_eq!(keys.len(), pairs.len(), "shared keys: {keys:?}");
    let mut held = Vec::new();
    for (limit, pair) in limits.iter().zip(pairs) {
        let permit = limit.try_acquire().await;
        assert!(
            permit.as_ref().is_ok_and(RedisPermit::is_shared),
            "{pair:?}: {permit:?}"
        );
        held.push(permit);
    }
    for (limit, pair) in limits.iter().zip(pairs) {
        assert_eq!(
            limit.try_acquire().await.err(),
            Some(Rejected::BulkheadFull),
            "{pair:?}"
        );
    }
}

/// `verify`: "takes, renews and releases one lease on a key of its own name's (partition
/// `%probe`, which no real partition has) ... The limit itself is not touched." On a full
/// limit (and on a limit whose partition is literally `%probe`) it succeeds, and the limit
/// stays exactly full.
#[tokio::test]
async fn verify_on_a_full_limit_succeeds_and_touches_nothing() {
    let server = RedisServer::start();
    let c = conn(&server);
    let plain = RedisBulkhead::builder(&c, "verify", 2)
        .when_unavailable(WhenUnavailable::Closed)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let probe_named = RedisBulkhead::builder(&c, "verify", 1)
        .partition("%probe")
        .when_unavailable(WhenUnavailable::Closed)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let held = [
        plain.try_acquire().await.unwrap(),
        plain.try_acquire().await.unwrap(),
        probe_named.try_acquire().await.unwrap(),
    ];
    for _ in 0..3 {
        plain.verify().await.unwrap();
        probe_named.verify().await.unwrap();
    }
    assert_eq!(server.zcard(plain.key()), 2);
    assert_eq!(server.zcard(probe_named.key()), 1);
    assert_eq!(
        plain.try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
    assert_eq!(
        probe_named.try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
    drop(held);
    whole_limit_free(&plain, 2).await;
    whole_limit_free(&probe_named, 1).await;
}

// ---------------------------------------------------------------------------------------------
// Breaker quorum
// ---------------------------------------------------------------------------------------------

fn breaker() -> CircuitBreaker<Tokio> {
    CircuitBreaker::builder()
        .runtime(Tokio)
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Opens `breaker` on its own evidence: one failure.
fn trip(breaker: &CircuitBreaker<Tokio>) {
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
}

fn member(
    conn: &RedisConn,
    name: &str,
    instance: &str,
    quorum: f64,
) -> (CircuitBreaker<Tokio>, BreakerQuorum) {
    let breaker = breaker();
    let layer = BreakerQuorum::builder(conn, name, breaker.clone())
        .quorum(quorum)
        .every(Duration::from_secs(10))
        .instance(instance)
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    (breaker, layer)
}

/// `BreakerQuorumBuilder::build`: "`ConfigError::OutOfRange` for a quorum outside (0, 1], a
/// period under 10 ms or whose three-period expiry is more than 0.1 % off whole µs or over
/// 2^50 µs", and the other errors it lists. `every`: "must be at least 10 ms ..., `3 × every`
/// within 0.1 % of whole µs and at most 2^50 µs". Errors, never panics (`Duration::MAX × 3`
/// overflows). (Periods down to 1 µs were accepted until audit s35: a refresh cannot keep
/// them, and the quorum silently never formed.)
#[tokio::test]
async fn quorum_builder_extremes_are_typed_errors_and_edges_build() {
    let conn = RedisConn::open("redis://127.0.0.1:1").unwrap();
    let base = || BreakerQuorum::builder(&conn, "q", breaker());
    let third_of_max = MAX_LEASE_MICROS / 3;
    let out_of_range: Vec<(&str, Result<BreakerQuorum, ConfigError>)> = vec![
        (
            "every 333 ns (999 ns)",
            base().every(Duration::from_nanos(333)).build(),
        ),
        (
            "every 334 ns (1.002 µs)",
            base().every(Duration::from_nanos(334)).build(),
        ),
        (
            "every 500 ns (1.5 µs)",
            base().every(Duration::from_nanos(500)).build(),
        ),
        ("every 1 µs", base().every(micros(1)).build()),
        (
            "every 333.334 µs",
            base().every(Duration::from_nanos(333_334)).build(),
        ),
        (
            "every 10 ms less 1 ns",
            base().every(Duration::from_nanos(9_999_999)).build(),
        ),
        (
            "every over 2^50/3 µs",
            base().every(micros(third_of_max + 1)).build(),
        ),
    ];
    let wrong: Vec<_> = out_of_range
        .into_iter()
        .filter(|(_, built)| !matches!(built, Err(ConfigError::OutOfRange { .. })))
        .map(|(what, built)| format!("{what}: {built:?}"))
        .collect();
    assert!(wrong.is_empty(), "not OutOfRange: {wrong:#?}");
    let refused: Vec<(&str, Result<BreakerQuorum, ConfigError>)> = vec![
        ("quorum 0", base().quorum(0.0).build()),
        ("quorum -0.5", base().quorum(-0.5).build()),
        ("quorum 1 + ε", base().quorum(1.0 + f64::EPSILON).build()),
        ("quorum NaN", base().quorum(f64::NAN).build()),
        ("quorum inf", base().quorum(f64::INFINITY).build()),
        ("every 0", base().every(Duration::ZERO).build()),
        ("deadline 0", base().deadline(Duration::ZERO).build()),
        (
            "deadline Duration::MAX",
            base().deadline(Duration::MAX).build(),
        ),
        (
            "empty name",
            BreakerQuorum::builder(&conn, "", breaker()).build(),
        ),
        ("empty instance", base().instance("").build()),
        // Typed errors, no panic from `3 × every` overflowing; the variant is checked in
        // `quorum_periods_beyond_u64_nanoseconds_are_out_of_range_as_documented`.
        ("every Duration::MAX", base().every(Duration::MAX).build()),
        (
            "every u64::MAX ns",
            base().every(Duration::from_nanos(u64::MAX)).build(),
        ),
    ];
    for (what, built) in refused {
        assert!(built.is_err(), "{what}: {built:?}");
    }
    let built: Vec<(&str, Result<BreakerQuorum, ConfigError>)> = vec![
        ("quorum 1", base().quorum(1.0).build()),
        (
            "smallest positive quorum",
            base().quorum(f64::MIN_POSITIVE).build(),
        ),
        (
            "every 10 ms",
            base().every(Duration::from_millis(10)).build(),
        ),
        (
            "every 2^50/3 µs",
            base().every(micros(third_of_max)).build(),
        ),
    ];
    for (what, built) in built {
        assert!(built.is_ok(), "{what}: {:?}", built.err());
    }
}

/// `BreakerQuorumBuilder::build`: "`ConfigError::OutOfRange` for ... a period whose
/// three-period expiry is ... over 2^50 µs; `ConfigError::DurationOverflow` for a three-period
/// expiry or a deadline beyond `u64::MAX` nanoseconds". (A black-box round found the first
/// wording named only `OutOfRange`; the docs now name both, and this pins which is which.)
#[tokio::test]
async fn quorum_periods_past_the_bounds_get_the_documented_errors() {
    let conn = RedisConn::open("redis://127.0.0.1:1").unwrap();
    let base = || BreakerQuorum::builder(&conn, "q", breaker());
    let just_past_2_50 = Duration::from_micros((1 << 50) / 3 + 1);
    assert!(
        matches!(
            base().every(just_past_2_50).build(),
            Err(ConfigError::OutOfRange { field: "every", .. })
        ),
        "three periods just past 2^50 µs"
    );
    for every in [
        Duration::from_nanos(u64::MAX / 3 + 1),
        Duration::from_nanos(u64::MAX),
        Duration::MAX,
    ] {
        assert_eq!(
            base().every(every).build().map(drop),
            Err(ConfigError::DurationOverflow { field: "every" }),
            "{every:?}"
        );
    }
}

/// `quorum`: "The share of live instances (0 < quorum ≤ 1) that must report open to force this
/// one open"; the default's words: "quorum 0.5 (at least half the live instances open)". With
/// 0.7 and 10 live instances, 6 open force nothing and 7 (exactly 0.7, where `0.7 × 10` is
/// `7.000000000000001` in doubles) force the other three.
#[tokio::test]
async fn a_quorum_reached_exactly_forces_the_rest_and_one_short_does_not() {
    let server = RedisServer::start();
    let conn = conn(&server);
    let members: Vec<_> = (0..10)
        .map(|i| member(&conn, "exact", &format!("i{i}"), 0.7))
        .collect();
    for (breaker, _) in &members[..6] {
        trip(breaker);
    }
    for (_, layer) in &members {
        layer.refresh().await.unwrap();
    }
    for (breaker, layer) in &members[6..] {
        let view = layer.refresh().await.unwrap();
        assert_eq!((view.open, view.live, view.forced_open), (6, 10, false));
        assert!(breaker.try_acquire().is_ok());
    }
    trip(&members[6].0);
    for (_, layer) in &members {
        layer.refresh().await.unwrap();
    }
    for (breaker, layer) in &members[7..] {
        let view = layer.refresh().await.unwrap();
        assert_eq!((view.open, view.live), (7, 10));
        assert!(view.forced_open, "7 of 10 is a quorum of 0.7: {view:?}");
        assert!(breaker.try_acquire().is_err());
    }
}

/// "Each `refresh` reports whether this instance's breaker is open (on its own evidence) ...
/// once the quorum is gone, the breaker this layer forced is reset ... If Redis is away, the
/// layer lets go of whatever it forced." An instance open on its own evidence keeps reporting
/// open through many rounds of a quorum it belongs to, and is never reset by the layer when
/// the quorum dissolves or Redis goes away: only what the layer forced is let go.
#[tokio::test]
async fn instances_open_on_their_own_evidence_keep_reporting_open_and_are_never_reset() {
    let mut server = RedisServer::start();
    let conn = conn(&server);
    let members: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|id| member(&conn, "own", id, 0.5))
        .collect();
    trip(&members[0].0);
    trip(&members[1].0);
    for round in 0..4 {
        for (i, (_, layer)) in members.iter().enumerate() {
            let view = layer.refresh().await.unwrap();
            if round > 0 {
                assert_eq!(
                    (view.open, view.live),
                    (2, 3),
                    "round {round}, instance {i}"
                );
            }
        }
        assert!(
            members[2].0.try_acquire().is_err(),
            "round {round}: c not forced"
        );
    }
    assert_eq!(members[0].0.state(), State::Open);
    assert_eq!(members[1].0.state(), State::Open);
    // B heals by hand: 1 of 3 is below the quorum; only C (forced by the layer) is let go.
    members[1].0.reset();
    for (_, layer) in &members {
        layer.refresh().await.unwrap();
    }
    let view = members[2].1.refresh().await.unwrap();
    assert_eq!((view.open, view.live, view.forced_open), (1, 3, false));
    assert!(members[2].0.try_acquire().is_ok(), "c still held open");
    assert_eq!(
        members[0].0.state(),
        State::Open,
        "the layer reset a's own open breaker"
    );
    // Quorum again (a and b), then Redis goes away: c is let go, a stays open.
    trip(&members[1].0);
    for _ in 0..2 {
        for (_, layer) in &members {
            layer.refresh().await.unwrap();
        }
    }
    assert!(members[2].0.try_acquire().is_err());
    server.kill();
    for (_, layer) in &members {
        let started = Instant::now();
        assert_eq!(layer.refresh().await.err(), Some(QuorumUnavailable));
        assert!(started.elapsed() < Duration::from_secs(2) + SLACK);
    }
    assert!(
        members[2].0.try_acquire().is_ok(),
        "c still forced with Redis away"
    );
    assert_eq!(members[0].0.state(), State::Open);
    assert_eq!(members[1].0.state(), State::Open);
}

/// "A breaker forced open by the quorum reports itself closed, so the quorum never feeds on its
/// own decision"; `every`: "An instance that stops reporting is forgotten after three
/// periods"; `spawn`: "Refreshes every period on a tokio task until the returned handle is
/// dropped". A (open) refreshing in the background forces C; once A's handle is dropped, C
/// — which alone would be 1 of 1 open if it counted its forced state — is let go.
#[tokio::test]
async fn a_forced_instance_never_keeps_itself_forced_once_the_others_are_gone() {
    let server = RedisServer::start();
    let conn = conn(&server);
    let every = Duration::from_millis(100);
    let build = |id: &str| {
        let breaker = breaker();
        let layer = BreakerQuorum::builder(&conn, "feed", breaker.clone())
            .quorum(0.5)
            .every(every)
            .instance(id)
            .deadline(Duration::from_secs(2))
            .build()
            .unwrap();
        (breaker, layer)
    };
    let (a_breaker, a) = build("a");
    let (c_breaker, c) = build("c");
    trip(&a_breaker);
    let refreshing = a.spawn();
    let view = eventually(async || c.refresh().await.ok().filter(|v| v.forced_open)).await;
    assert_eq!((view.open, view.live), (1, 2));
    assert!(c_breaker.try_acquire().is_err());
    drop(refreshing);
    let started = Instant::now();
    let view = eventually(async || {
        c.refresh()
            .await
            .ok()
            .filter(|v| !v.forced_open && v.live == 1)
    })
    .await;
    assert_eq!(view.open, 0, "c counts its own forced state: {view:?}");
    assert!(c_breaker.try_acquire().is_ok());
    // Forgotten after three periods (300 ms), with slack.
    assert!(
        started.elapsed() < every * 3 + SLACK * 2,
        "{:?}",
        started.elapsed()
    );
}

/// `instance`: "This instance's id among the others" and `QuorumView::live`: "Live instances".
/// Two layers under one instance id are one instance; a different name is another dependency.
#[tokio::test]
async fn one_instance_id_counts_once_and_names_do_not_mix() {
    let server = RedisServer::start();
    let conn = conn(&server);
    let (x_breaker, x1) = member(&conn, "ids", "x", 0.5);
    let x2 = BreakerQuorum::builder(&conn, "ids", x_breaker.clone())
        .every(Duration::from_secs(10))
        .instance("x")
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let (_, y) = member(&conn, "ids", "y", 0.5);
    let (_, elsewhere) = member(&conn, "other-dependency", "z", 0.5);
    trip(&x_breaker);
    x1.refresh().await.unwrap();
    x2.refresh().await.unwrap();
    let view = y.refresh().await.unwrap();
    assert_eq!((view.open, view.live), (1, 2), "{view:?}");
    let view = elsewhere.refresh().await.unwrap();
    assert_eq!((view.open, view.live, view.forced_open), (0, 1, false));
}

// ---------------------------------------------------------------------------------------------
// More attacks
// ---------------------------------------------------------------------------------------------

/// `RedisPermit`: "Dropping it releases the slot (a Redis lease in the background)"; the
/// release runs "in the background on `runtime`", and only "Without a runtime ... the lease
/// expires on its own". A permit sent to a plain thread (no runtime there) while the runtime
/// it was acquired on still runs is released, not left to its 30 s lease.
#[test]
fn a_permit_dropped_on_a_plain_thread_is_released_while_its_runtime_lives() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let bulkhead = runtime.block_on(async { replica(&server, "plain-thread", 1) });
    let permit = runtime.block_on(bulkhead.try_acquire()).unwrap();
    assert!(permit.is_shared());
    std::thread::spawn(move || drop(permit)).join().unwrap();
    runtime.block_on(async {
        no_leases_left(&server, bulkhead.key()).await;
        whole_limit_free(&bulkhead, 1).await;
    });
}

/// "A breaker forced open or closed by hand is left alone", with "once the quorum is gone, the
/// breaker this layer forced is reset". A breaker the layer forced open, then closed by hand
/// (`force_closed`), is the user's: neither forced again while the quorum lasts nor reset when
/// it goes.
#[tokio::test]
async fn a_breaker_forced_closed_by_hand_after_the_layer_forced_it_is_left_alone() {
    let server = RedisServer::start();
    let conn = conn(&server);
    let (a_breaker, a) = member(&conn, "hand", "a", 0.5);
    let (c_breaker, c) = member(&conn, "hand", "c", 0.5);
    trip(&a_breaker);
    a.refresh().await.unwrap();
    assert!(c.refresh().await.unwrap().forced_open);
    assert!(c_breaker.try_acquire().is_err());
    c_breaker.force_closed();
    for _ in 0..2 {
        a.refresh().await.unwrap();
        let view = c.refresh().await.unwrap();
        assert!(!view.forced_open, "{view:?}");
        assert_eq!(c_breaker.state(), State::ForcedClosed);
    }
    a_breaker.reset();
    a.refresh().await.unwrap();
    let view = c.refresh().await.unwrap();
    assert_eq!((view.open, view.forced_open), (0, false));
    assert_eq!(
        c_breaker.state(),
        State::ForcedClosed,
        "the layer reset a breaker closed by hand"
    );
}

/// The same rule the other way: forced open by the layer, then forced open by hand too; the
/// quorum going away must not reset what the user forced. `BreakerQuorum`: "A breaker forced
/// open or closed by hand is left alone"; `CircuitBreaker::force_open`: "Opens the breaker by
/// hand; it stays open until `reset`" (the user never calls `reset`).
#[tokio::test]
async fn a_breaker_forced_open_by_hand_after_the_layer_forced_it_stays_open() {
    let server = RedisServer::start();
    let conn = conn(&server);
    let (a_breaker, a) = member(&conn, "hand-open", "a", 0.5);
    let (c_breaker, c) = member(&conn, "hand-open", "c", 0.5);
    trip(&a_breaker);
    a.refresh().await.unwrap();
    assert!(c.refresh().await.unwrap().forced_open);
    c_breaker.force_open();
    a_breaker.reset();
    a.refresh().await.unwrap();
    c.refresh().await.unwrap();
    assert_eq!(
        c_breaker.state(),
        State::ForcedOpen,
        "the layer reset a breaker forced open by hand"
    );
}

/// `deadline`: "How long one Redis call may take before the failure policy decides"; with the
/// smallest deadline there is (1 ns), every acquire times out, and `try_acquire`'s "dropping
/// the future (or a timeout) after the request left releases the lease Redis may have granted
/// meanwhile" must hold for each: no lease is left, a limit of 1 stays whole.
#[tokio::test]
async fn a_one_nanosecond_deadline_fails_closed_and_leaks_nothing() {
    let server = RedisServer::start();
    let bulkhead = replica_with(
        &server,
        "one-ns",
        1,
        LONG_LEASE,
        Duration::from_nanos(1),
        WhenUnavailable::Closed,
    );
    for _ in 0..50 {
        let got = bulkhead.try_acquire().await;
        assert!(
            matches!(&got, Err(Rejected::BackendUnavailable))
                || got.as_ref().is_ok_and(RedisPermit::is_shared),
            "{got:?}"
        );
        drop(got);
        tokio::task::yield_now().await;
    }
    let other = replica(&server, "one-ns", 1);
    no_leases_left(&server, other.key()).await;
    whole_limit_free(&other, 1).await;
}

/// `acquire_before`: "asking again every few milliseconds (jittered, so replicas do not ask in
/// step)". Waiting 300 ms on a full limit costs Redis a few dozen acquires, not a hot loop
/// (more than one a millisecond) nor a single try.
#[tokio::test]
async fn acquire_before_asks_every_few_milliseconds_not_in_a_hot_loop() {
    let server = RedisServer::start();
    let holder = replica(&server, "cadence", 1);
    let waiter = replica(&server, "cadence", 1);
    let _held = holder.try_acquire().await.unwrap();
    // Warm the waiter's connection and script.
    assert_eq!(
        waiter.try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
    let before = server.calls("evalsha");
    let waited = waiter
        .acquire_before(after(Duration::from_millis(300)))
        .await;
    let asked = server.calls("evalsha") - before;
    assert_eq!(waited.err(), Some(Rejected::DeadlineExceeded));
    assert!((5..=300).contains(&asked), "{asked} acquires in 300 ms");
}

/// `verify`'s errors: "As `RedisRateLimiter::verify`", which says "`Unreachable` when Redis
/// does not answer within 2 s". A frozen Redis is reported so, in about 2 s, and the limit is
/// whole once it thaws.
#[tokio::test]
async fn verify_on_a_frozen_redis_is_unreachable_in_about_two_seconds() {
    let server = RedisServer::start();
    let bulkhead = replica(&server, "verify-frozen", 1);
    drop(eventually(async || bulkhead.try_acquire().await.ok()).await);
    server.freeze();
    let started = Instant::now();
    let verified = bulkhead.verify().await;
    let took = started.elapsed();
    server.thaw();
    assert!(
        matches!(verified, Err(ConnectError::Unreachable { .. })),
        "{verified:?}"
    );
    assert!(took < Duration::from_secs(2) + SLACK, "took {took:?}");
    no_leases_left(&server, bulkhead.key()).await;
    whole_limit_free(&bulkhead, 1).await;
}
