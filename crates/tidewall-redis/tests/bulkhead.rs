//! The leased bulkhead against a real redis-server: one limit across replicas, leases that
//! are renewed while held and reaped when their holder is gone, release on drop, and the
//! failure policies when Redis stops answering.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::gate::{Gate, Mode};
use common::{RedisServer, answered_past_deadline, eventually};
use tidewall::{Deadline, Rejected};
use tidewall_redis::{RedisBulkhead, RedisConn, WhenUnavailable};

fn replica(server: &RedisServer, limit: u32, lease: Duration) -> RedisBulkhead {
    let conn = RedisConn::open(server.url()).unwrap();
    RedisBulkhead::builder(&conn, "db", limit)
        .lease(lease)
        .deadline(Duration::from_secs(2))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap()
}

#[tokio::test]
async fn three_replicas_hold_at_most_the_limit_and_a_release_frees_a_slot() {
    let server = RedisServer::start();
    let replicas: Vec<_> = (0..3)
        .map(|_| replica(&server, 4, Duration::from_secs(30)))
        .collect();
    let mut held = Vec::new();
    for round in 0..2 {
        for replica in &replicas {
            match replica.try_acquire().await {
                Ok(permit) => {
                    assert!(permit.is_shared());
                    held.push(permit);
                }
                Err(rejected) => {
                    assert_eq!(rejected, Rejected::BulkheadFull, "round {round}");
                }
            }
        }
    }
    assert_eq!(held.len(), 4, "six attempts, a limit of four");
    drop(held.pop());
    // The release happens in the background.
    let permit = eventually(async || replicas[2].try_acquire().await.ok()).await;
    assert!(permit.is_shared());
    assert_eq!(
        replicas[0].try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
}

/// A holder that died leaves its lease behind, renewed by nobody: its slot comes back when
/// that lease expires, and not before. The lease expires 3 s after it is written (room for
/// the first, refused try on a loaded machine); `eventually` gives up 10 s after that try,
/// well before the replica's own 30 s lease could be what freed the slot. When is read on
/// Redis's clock, not timed: the lease taken then was granted at its score less 30 s, which
/// must not be before the expiry, nor more than 2 s after it (the replica asks every 10 ms).
#[tokio::test]
async fn a_crashed_holders_slot_returns_when_its_lease_expires() {
    let server = RedisServer::start();
    let lease = Duration::from_secs(30);
    let bulkhead = replica(&server, 1, lease);
    // Connected and the scripts loaded first, so the 3 s below are not spent on that.
    eventually(async || bulkhead.verify().await.ok()).await;
    // What a holder that died leaves behind: a lease nobody renews, 3 s from now.
    let expiry = server.time_us() + 3_000_000;
    let _: () = redis::cmd("ZADD")
        .arg(bulkhead.key())
        .arg(expiry)
        .arg("crashed-holder")
        .query(&mut server.admin().unwrap())
        .unwrap();
    assert_eq!(
        bulkhead.try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
    let permit = eventually(async || bulkhead.try_acquire().await.ok()).await;
    assert!(permit.is_shared());
    // Only the new lease is left; its score is when it was granted plus the lease (a renewal,
    // every 10 s, would only move it later).
    let leases: Vec<(String, u64)> = redis::cmd("ZRANGE")
        .arg(bulkhead.key())
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut server.admin().unwrap())
        .unwrap();
    let [(member, score)] = leases.as_slice() else {
        panic!("one lease expected: {leases:?}");
    };
    assert_ne!(member, "crashed-holder");
    let lease_us = u64::try_from(lease.as_micros()).unwrap();
    let granted = score - lease_us;
    assert!(
        granted >= expiry,
        "reaped {} µs before it expired",
        expiry - granted
    );
    assert!(
        granted < expiry + 2_000_000,
        "back {} µs after the lease expired",
        granted - expiry
    );
}

#[tokio::test]
async fn a_held_permit_is_renewed_past_its_lease() {
    let server = RedisServer::start();
    let lease = Duration::from_millis(600);
    let holder = replica(&server, 1, lease);
    let other = replica(&server, 1, lease);
    let permit = holder.try_acquire().await.unwrap();
    // Four leases long: without renewal the slot would have been reaped.
    tokio::time::sleep(lease * 4).await;
    assert_eq!(
        other.try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
    drop(permit);
    eventually(async || other.try_acquire().await.ok()).await;
}

#[tokio::test]
async fn a_frozen_redis_applies_the_policy_within_the_deadline() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let build = |policy| {
        RedisBulkhead::builder(&conn, "frozen", 8)
            .deadline(Duration::from_millis(10))
            .when_unavailable(policy)
            .build()
            .unwrap()
    };
    let (closed, local) = (
        build(WhenUnavailable::Closed),
        build(WhenUnavailable::Local { share: 0.25 }),
    );
    drop(eventually(async || closed.try_acquire().await.ok()).await);
    server.freeze();
    let started = Instant::now();
    assert_eq!(
        closed.try_acquire().await.err(),
        Some(Rejected::BackendUnavailable)
    );
    // Within its 10 ms deadline: a frozen server never answers, so 2 s (room for a loaded
    // machine) still tells the deadline from a wait on the server.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // A quarter of 8: two local slots, then full.
    let first = local.try_acquire().await.unwrap();
    let second = local.try_acquire().await.unwrap();
    assert!(!first.is_shared() && !second.is_shared());
    assert_eq!(
        local.try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
    drop((first, second));
    server.thaw();
    // The acquires that timed out while Redis was frozen may have been granted once it ran
    // them: each was followed by a release, so all 8 slots come back.
    let conn = RedisConn::open(server.url()).unwrap();
    let same_key = RedisBulkhead::builder(&conn, "frozen", 8)
        .deadline(Duration::from_secs(2))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    let mut held = Vec::new();
    eventually(async || {
        if let Ok(permit) = same_key.try_acquire().await {
            held.push(permit);
        }
        (held.len() == 8).then_some(())
    })
    .await;
}

#[tokio::test]
async fn bad_configurations_are_typed_errors() {
    let conn = RedisConn::open("redis://127.0.0.1:1").unwrap();
    assert!(RedisBulkhead::builder(&conn, "bad", 0).build().is_err());
    assert!(
        RedisBulkhead::builder(&conn, "bad", 1)
            .lease(Duration::from_millis(1))
            .build()
            .is_err()
    );
    assert!(
        RedisBulkhead::builder(&conn, "bad", 1)
            .when_unavailable(WhenUnavailable::Local { share: 2.0 })
            .build()
            .is_err()
    );
    assert!(RedisBulkhead::builder(&conn, "", 1).build().is_err());
}

/// The deadline of [`open_replica`]'s calls: far longer than any stall of a loaded machine,
/// so that "refused at once" can be told from "waited out the limit's own deadline" with
/// bounds of a few seconds ([`AT_ONCE`]).
const OPEN_DEADLINE: Duration = Duration::from_secs(30);

/// How soon a refusal that must not wait out [`OPEN_DEADLINE`] comes: a sixth of it.
const AT_ONCE: Duration = Duration::from_secs(5);

/// A replica failing open, with a deadline of [`OPEN_DEADLINE`] per call, on `conn`.
fn open_replica(conn: &RedisConn, name: &str, limit: u32) -> RedisBulkhead {
    RedisBulkhead::builder(conn, name, limit)
        .deadline(OPEN_DEADLINE)
        .when_unavailable(WhenUnavailable::Open)
        .build()
        .unwrap()
}

/// A caller whose deadline has already passed gets one try: a slot when Redis answers, else
/// `DeadlineExceeded`, never the failure policy's slot (r5 finding 1: the try ran uncapped
/// and the open policy admitted without a lease), and within [`AT_ONCE`] (5 s), not after
/// the limit's own deadline of 30 s (r11 finding 2).
#[tokio::test]
async fn a_deadline_already_passed_is_refused_not_failed_open() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let open = open_replica(&conn, "passed", 2);
    // Connected through a replica that fails closed on the same connection.
    let connected = RedisBulkhead::builder(&conn, "passed-probe", 1)
        .deadline(Duration::from_secs(1))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    drop(eventually(async || connected.try_acquire().await.ok()).await);
    // Redis answers: a lease, at once.
    let permit =
        answered_past_deadline(async || open.acquire_before(Deadline::at(Instant::now())).await)
            .await;
    assert!(permit.is_shared());
    server.freeze();
    let asked = Instant::now();
    let refused = open.acquire_before(Deadline::at(Instant::now())).await;
    let took = asked.elapsed();
    server.thaw();
    assert_eq!(refused.err(), Some(Rejected::DeadlineExceeded));
    // One round trip of at most 1 ms, not the limit's 30 s (r11 finding 2); the bound leaves
    // seconds for a loaded machine.
    assert!(took < AT_ONCE, "took {took:?}");
}

/// With the breaker around Redis open, a caller whose deadline has passed is refused at
/// once and leaves nothing behind: the acquire was never sent, so no release is either
/// (r11 finding 4: the open breaker was taken for a cut round trip, and each such call sent
/// a `ZREM` to the frozen server).
#[tokio::test]
async fn a_passed_deadline_under_an_open_breaker_sends_no_release() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let open = RedisBulkhead::builder(&conn, "breaker-open", 2)
        .deadline(Duration::from_millis(50))
        .when_unavailable(WhenUnavailable::Open)
        .build()
        .unwrap();
    // Connected and the scripts loaded (verify's own release included).
    eventually(async || open.verify().await.ok()).await;
    let before = server.calls("zrem");
    server.freeze();
    // Five timeouts open the breaker; each releases the lease it may have been granted.
    for _ in 0..5 {
        assert!(!open.try_acquire().await.unwrap().is_shared());
    }
    for _ in 0..20 {
        let asked = Instant::now();
        let refused = open.acquire_before(Deadline::at(Instant::now())).await;
        assert_eq!(refused.err(), Some(Rejected::DeadlineExceeded));
        // Not sent, so not waiting on the frozen server (which would never answer); 2 s is
        // room for a loaded machine. A try sent instead shows up in the releases below.
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
    server.thaw();
    // Everything sent meanwhile is answered now; the releases end.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let releases = server.calls("zrem") - before;
    assert!(
        releases <= 10,
        "{releases} releases: more than the five timed-out tries' (twice at most)"
    );
}

/// A TCP proxy to a server that forwards what clients send until the cutoff set by
/// [`silent_from`](Self::silent_from), and nothing after (their connections stay open,
/// unanswered): a Redis that goes silent at an instant. The cutoff is set once the clients
/// are warmed up, so however long that took, it happened while the proxy still forwarded.
/// Stops taking connections when dropped.
struct SilentAfter {
    port: u16,
    stop: Arc<AtomicBool>,
    cutoff: Arc<Mutex<Option<Instant>>>,
}

impl SilentAfter {
    fn start(server: &RedisServer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, upstream) = (Arc::new(AtomicBool::new(false)), server.port());
        let cutoff = Arc::new(Mutex::new(None::<Instant>));
        let (stopped, silent_from) = (Arc::clone(&stop), Arc::clone(&cutoff));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                let (Ok(client), Ok(server)) =
                    (client, TcpStream::connect(("127.0.0.1", upstream)))
                else {
                    continue;
                };
                let (mut requests, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut replies, mut to_client) = (server, client);
                let silent_from = Arc::clone(&silent_from);
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = requests.read(&mut buffer) {
                        let cutoff = *silent_from.lock().unwrap();
                        if cutoff.is_some_and(|cutoff| Instant::now() >= cutoff)
                            || to_server.write_all(&buffer[..n]).is_err()
                        {
                            return;
                        }
                    }
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut replies, &mut to_client);
                });
            }
        });
        Self { port, stop, cutoff }
    }

    /// Forwards nothing sent at or after `cutoff`.
    fn silent_from(&self, cutoff: Instant) {
        *self.cutoff.lock().unwrap() = Some(cutoff);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for SilentAfter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// `acquire_before` on a full limit makes its last try before its deadline, never at it: a
/// Redis that goes silent at the deadline is never asked past it, so the wait ends by the
/// deadline with `DeadlineExceeded` (r5 finding 1: the last try was made at the deadline,
/// uncapped, and the open policy admitted it after the limit's own deadline, 30 s here: the
/// wait must end within [`AT_ONCE`] of the caller's deadline, room for a loaded machine).
#[tokio::test]
async fn the_last_try_is_made_before_the_deadline_not_at_it() {
    let server = RedisServer::start();
    let holder = replica(&server, 1, Duration::from_secs(30));
    let _held = eventually(async || holder.try_acquire().await.ok()).await;
    let proxy = SilentAfter::start(&server);
    let conn = RedisConn::open(proxy.url()).unwrap();
    let waiter = open_replica(&conn, "db", 1);
    // Connected and the script loaded, through the proxy, before it goes silent.
    assert_eq!(
        waiter.try_acquire().await.err(),
        Some(Rejected::BulkheadFull)
    );
    // Silent from the caller's deadline on, set only now that the warm-up is done.
    let deadline = Instant::now() + Duration::from_millis(200);
    proxy.silent_from(deadline);
    let waited = waiter.acquire_before(Deadline::at(deadline)).await;
    let over = Instant::now().saturating_duration_since(deadline);
    assert_eq!(waited.err(), Some(Rejected::DeadlineExceeded));
    assert!(over < AT_ONCE, "{over:?} past the deadline");
}

/// Slow acquires open the breaker around Redis (five timeouts, open 500 ms) while a permit is
/// held; Redis answers again at once. The lease (450 ms) ends while the breaker is still
/// open: its renewals must not wait for the breaker, or another replica takes the slot.
#[tokio::test]
async fn an_open_breaker_does_not_let_a_held_lease_lapse() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let lease = Duration::from_millis(450);
    let holder = RedisBulkhead::builder(&conn, "lapse", 1)
        .lease(lease)
        .deadline(Duration::from_millis(10))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    let other = RedisBulkhead::builder(&conn, "lapse", 1)
        .lease(lease)
        .deadline(Duration::from_secs(2))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    let permit = eventually(async || holder.try_acquire().await.ok()).await;
    let held_at = Instant::now();
    server.freeze();
    for _ in 0..5 {
        assert_eq!(
            holder.try_acquire().await.err(),
            Some(Rejected::BackendUnavailable)
        );
    }
    server.thaw();
    // Past the lease, before the breaker (open from about 50 ms) lets a call through again.
    tokio::time::sleep_until((held_at + lease + Duration::from_millis(50)).into()).await;
    assert_eq!(
        other.try_acquire().await.err(),
        Some(Rejected::BulkheadFull),
        "the held lease lapsed while the breaker was open"
    );
    drop(permit);
    eventually(async || other.try_acquire().await.ok()).await;
}

/// A held lease (3 s, renewed about every second) outlives an outage that swallows two
/// renewals in a row: the renewals that went unanswered are tried again soon, not a third of
/// the lease later, so one lands between the outage's end (0.8 s before the lease would run
/// out) and the lease's end. Until well past that end, another replica (which reaches Redis
/// directly) finds the limit full.
#[tokio::test]
async fn a_held_lease_outlives_an_outage_of_most_of_its_term() {
    let server = RedisServer::start();
    let gate = Gate::start(&server);
    let lease = Duration::from_secs(3);
    let holder = RedisBulkhead::builder(&RedisConn::open(gate.url()).unwrap(), "db", 1)
        .lease(lease)
        .deadline(Duration::from_millis(100))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap();
    let other = replica(&server, 1, lease);
    let asked = Instant::now();
    let permit = eventually(async || holder.try_acquire().await.ok()).await;
    // The first renewal (about 1 s in) is answered; the next two (about 2 s and 3.1 s in)
    // are lost. Without quicker tries the fourth would come after the lease ran out
    // (about 4 s in, counted from the first renewal).
    tokio::time::sleep_until((asked + lease / 2).into()).await;
    gate.set(Mode::Blackhole);
    tokio::time::sleep_until((asked + lease * 16 / 15).into()).await;
    gate.set(Mode::Pass);
    while asked.elapsed() < lease * 8 / 5 {
        assert_eq!(
            other.try_acquire().await.err(),
            Some(Rejected::BulkheadFull),
            "the held lease lapsed {:?} after it was asked for",
            asked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(permit);
    eventually(async || other.try_acquire().await.ok()).await;
}
