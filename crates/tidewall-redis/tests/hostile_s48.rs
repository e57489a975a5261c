//! Black-box, adversarial tests written from the public docs only, for the contracts changed
//! in the last three commits: a lease-mode give-back sent and not answered gives the cells up
//! while one the breaker stopped keeps them, and the fleet bound across freezes, partitions,
//! restarts, repeated, concurrent and cancelled give-backs and dropped handles; `verify` under
//! the limit's own (escaped) hash tag, for ACL users narrowed to one name or partition, never
//! touching the real limit; the failure policy under error replies (`OOM`, `NOPERM`,
//! `READONLY`); and the bulkhead's release and renewal across runtimes.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::gate::{Gate, Mode};
use common::{Delayed, RedisServer, eventually, whole_limit_free};
use tidewall::admission::Admission;
use tidewall::breaker::CircuitBreaker;
use tidewall::rt::Tokio;
use tidewall::{Deadline, Rejected};
use tidewall_core::rng::SplitMix64;
use tidewall_redis::{
    BreakerQuorum, ConnectError, LeaseMode, RedisBulkhead, RedisConn, RedisRateLimiter,
    WhenUnavailable,
};

const HOUR: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------------------
// Helpers.

/// A rate limit of one cell an hour with `burst` (nothing frees during a test), exact or in
/// lease mode, with `policy` and `deadline`.
fn hourly_on(
    conn: &RedisConn,
    name: &str,
    burst: u32,
    lease: Option<LeaseMode>,
    policy: WhenUnavailable,
    deadline: Duration,
) -> RedisRateLimiter {
    let builder = RedisRateLimiter::builder(conn, name, 1, HOUR)
        .burst(burst)
        .deadline(deadline)
        .when_unavailable(policy);
    match lease {
        Some(mode) => builder.lease_mode(mode),
        None => builder,
    }
    .build()
    .unwrap()
}

/// The same on a connection of its own to `url`, failing closed.
fn hourly(
    url: &str,
    name: &str,
    burst: u32,
    lease: Option<LeaseMode>,
    deadline: Duration,
) -> RedisRateLimiter {
    let conn = RedisConn::open(url).unwrap();
    hourly_on(&conn, name, burst, lease, WhenUnavailable::Closed, deadline)
}

/// Batches of `max_batch` after the first (a horizon that long makes each the whole batch).
fn whole_batches(max_batch: u32) -> Option<LeaseMode> {
    Some(LeaseMode::new(max_batch).unwrap().horizon(Duration::MAX))
}

/// The cells an exact one-per-hour limiter of `burst` admits now on `name`, greedily.
async fn drain(server: &RedisServer, name: &str, burst: u32) -> u64 {
    let exact = hourly(&server.url(), name, burst, None, Duration::from_secs(2));
    let mut admitted = 0u64;
    for chunk in [100_000, 10_000, 1_000, 100, 10, 1] {
        if chunk > burst {
            continue;
        }
        loop {
            match exact.check_n(chunk).await {
                Ok(()) => admitted += u64::from(chunk),
                Err(Rejected::RateLimited { .. }) => break,
                Err(other) => panic!("draining {name}: {other:?}"),
            }
        }
    }
    admitted
}

/// Drains `name` again and again until a whole second passes with nothing more coming free
/// (cells given back in the background land meanwhile): everything that came free.
async fn drain_settled(server: &RedisServer, name: &str, burst: u32) -> u64 {
    let mut free = drain(server, name, burst).await;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let more = drain(server, name, burst).await;
        if more > 0 {
            free += more;
            quiet_since = Instant::now();
        }
    }
    free
}

/// Admits `n` calls through Redis, one at a time, and returns how many cells they spent.
async fn check_each(limiter: &RedisRateLimiter, n: u64) -> u64 {
    for _ in 0..n {
        limiter.check().await.unwrap();
    }
    n
}

/// Tries `tries` admissions from the cells the replica holds (no Redis round trip), and
/// returns how many it admitted.
fn admit_held(limiter: &RedisRateLimiter, tries: u32) -> u64 {
    let mut admitted = 0;
    for _ in 0..tries {
        if Admission::try_admit(limiter).is_some() {
            admitted += 1;
        }
    }
    admitted
}

/// What was spent and what Redis has free never add up to more than the burst.
#[track_caller]
fn assert_within_burst(spent: u64, free: u64, burst: u32) {
    assert!(
        spent + free <= u64::from(burst),
        "{spent} spent + {free} free of a burst of {burst}"
    );
}

/// Drains the limit in Redis and asserts that exactly the `spent` cells of `burst` are gone:
/// every unspent one is free again, none twice.
async fn assert_unspent_free(server: &RedisServer, name: &str, burst: u32, spent: u64, why: &str) {
    assert_eq!(
        drain(server, name, burst).await,
        u64::from(burst) - spent,
        "{why}"
    );
}

/// Polls `bulkhead` every 50 ms for `span`, asserting that it stays full all along.
async fn stays_full_for(bulkhead: &RedisBulkhead, span: Duration, why: &str) {
    let until = Instant::now() + span;
    while Instant::now() < until {
        assert_eq!(
            bulkhead.try_acquire().await.map(drop),
            Err(Rejected::BulkheadFull),
            "{why}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `EVALSHA`s Redis received (run or refused before running), from `INFO commandstats`.
fn evalsha_received(server: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.admin().unwrap())
        .unwrap();
    let Some(line) = info
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:"))
    else {
        return 0;
    };
    let field = |name: &str| -> u64 {
        line.split(',')
            .find_map(|kv| kv.strip_prefix(name))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    field("calls=") + field("rejected_calls=")
}

/// A connection as `user` (password `pw`), checked at start-up.
async fn connect_as(server: &RedisServer, user: &str) -> RedisConn {
    RedisConn::builder(server.url())
        .username(user)
        .password("pw")
        .connect()
        .await
        .unwrap()
}

/// The rule the crate docs give, with its keys narrowed to `keys`.
fn documented_rule(keys: &str) -> String {
    format!(
        "on >pw resetkeys ~{keys} resetchannels -@all +evalsha +script|load +zrem +time +get \
         +set +zremrangebyscore +zcount +zcard +zadd +zscore +pttl +pexpire"
    )
}

fn breaker() -> CircuitBreaker<Tokio> {
    CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(60))
        .runtime(Tokio)
        .build()
        .unwrap()
}

fn is_permission(result: &Result<(), ConnectError>) -> bool {
    matches!(result, Err(ConnectError::Permission { .. }))
}

/// `MONITOR` on a raw connection: every command the server runs, one line each, collected
/// on a thread until dropped.
struct Monitor {
    lines: Arc<Mutex<Vec<String>>>,
    stream: TcpStream,
}

impl Monitor {
    fn start(server: &RedisServer) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        stream.write_all(b"MONITOR\r\n").unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (reader, sink) = (stream.try_clone().unwrap(), Arc::clone(&lines));
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut line = String::new();
            while let Ok(1..) = reader.read_line(&mut line) {
                sink.lock().unwrap().push(line.trim_end().to_owned());
                line.clear();
            }
        });
        let monitor = Self { lines, stream };
        // Running once the OK came.
        let started = Instant::now();
        while monitor.lines.lock().unwrap().is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10), "no MONITOR");
            std::thread::sleep(Duration::from_millis(5));
        }
        monitor
    }

    /// The arguments of every command run between two `ECHO`s of markers sent on the admin
    /// connection (waits for the end marker to show).
    async fn between(&self, server: &RedisServer, begin: &str, end: &str) -> Vec<Vec<String>> {
        let _: String = redis::cmd("ECHO")
            .arg(end)
            .query(&mut server.admin().unwrap())
            .unwrap();
        eventually(async || {
            let lines = self.lines.lock().unwrap();
            let args: Vec<Vec<String>> = lines.iter().map(|l| monitor_args(l)).collect();
            let from = args.iter().position(|a| a.iter().any(|x| x == begin))?;
            let to = args.iter().position(|a| a.iter().any(|x| x == end))?;
            Some(args[from + 1..to].to_vec())
        })
        .await
    }

    fn mark(server: &RedisServer, marker: &str) {
        let _: String = redis::cmd("ECHO")
            .arg(marker)
            .query(&mut server.admin().unwrap())
            .unwrap();
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// The quoted arguments of one `MONITOR` line, unescaped.
fn monitor_args(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let Some(start) = line.find("] ") else {
        return args;
    };
    let mut chars = line[start + 2..].chars().peekable();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut arg = Vec::<u8>::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('x') => {
                        let hex: String = [chars.next().unwrap(), chars.next().unwrap()]
                            .iter()
                            .collect();
                        arg.push(u8::from_str_radix(&hex, 16).unwrap());
                    }
                    Some('n') => arg.push(b'\n'),
                    Some('r') => arg.push(b'\r'),
                    Some('t') => arg.push(b'\t'),
                    Some(other) => {
                        let mut buf = [0; 4];
                        arg.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
                    }
                    None => break,
                },
                other => {
                    let mut buf = [0; 4];
                    arg.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        args.push(String::from_utf8_lossy(&arg).into_owned());
    }
    args
}

/// Redis Cluster's hash tag of `key`: between the first `{` and the first `}` after it.
fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')? + open + 1;
    (close > open + 1).then(|| &key[open + 1..close])
}

/// Every key but the probes', with its `DUMP` and `PTTL`.
fn real_state(server: &RedisServer) -> BTreeMap<String, (Vec<u8>, i64)> {
    let mut admin = server.admin().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut admin).unwrap();
    keys.into_iter()
        .filter(|key| !key.contains("%probe"))
        .filter_map(|key| {
            let dump: Option<Vec<u8>> = redis::cmd("DUMP").arg(&key).query(&mut admin).unwrap();
            let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut admin).unwrap();
            dump.map(|dump| (key, (dump, ttl)))
        })
        .collect()
}

/// The same keys with the same `DUMP`s, and no expiry extended.
fn assert_unchanged(
    before: &BTreeMap<String, (Vec<u8>, i64)>,
    after: &BTreeMap<String, (Vec<u8>, i64)>,
) {
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "keys appeared or vanished under verify"
    );
    for (key, (dump, ttl)) in before {
        let (dump_after, ttl_after) = &after[key];
        assert_eq!(dump, dump_after, "{key} changed under verify");
        assert!(
            *ttl_after <= *ttl,
            "{key}'s expiry was extended by verify: {ttl} ms, then {ttl_after} ms"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 1. Lease mode: what a give-back does with the cells.

/// A give-back lost in a network partition (sent, never answered; the connection then cut
/// so Redis never runs it): the replica gives the cells up. Afterwards it holds nothing, it
/// cannot spend them, and spent + free never exceeds the burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_lost_in_a_partition_gives_the_cells_up() {
    const BURST: u32 = 100;
    let server = RedisServer::start();
    let gate = Gate::start(&server);
    let leased = hourly(
        &gate.url(),
        "partitioned",
        BURST,
        whole_batches(10),
        Duration::from_millis(200),
    );
    let mut spent = check_each(&leased, 2).await;
    // An answered give-back first: the script is loaded, and the cells are free again.
    assert!(leased.return_unspent().await.unwrap() > 0);
    for _ in 0..3 {
        leased.check().await.unwrap();
        spent += 1;
    }
    // Any refill fetched ahead lands before the partition.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent_before = gate.evalsha_total();
    gate.set(Mode::Blackhole);
    assert_eq!(
        leased.return_unspent().await,
        Err(Rejected::BackendUnavailable)
    );
    assert!(
        gate.evalsha_total() > sent_before,
        "the give-back was sent into the partition"
    );
    gate.set(Mode::Pass);
    // Given up: nothing is left to give back, nothing to spend once Redis is empty.
    let again = eventually(async || leased.return_unspent().await.ok()).await;
    assert_eq!(again, 0, "the cells were given up, not kept");
    let free = drain(&server, "partitioned", BURST).await;
    let spent_after = admit_held(&leased, 20);
    assert_eq!(spent_after, 0, "cells given up were spent anyway");
    // (The connection the partition cut may fail one call while it reconnects.)
    let decided = eventually(async || match leased.check().await {
        Err(Rejected::BackendUnavailable) => None,
        other => Some(other),
    })
    .await;
    assert!(
        matches!(decided, Err(Rejected::RateLimited { .. })),
        "Redis is empty and the replica holds nothing: {decided:?}"
    );
    assert_within_burst(spent, free, BURST);
}

/// A give-back the breaker around Redis stops is not sent (Redis receives no `EVALSHA`), and
/// the cells stay held: spendable without Redis, and given back by a later call once Redis
/// answers again. The breaker is opened here by `NOPERM` replies after an ACL change, not by
/// an outage; a second give-back while it is still open keeps them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_an_open_breaker_stops_sends_nothing_and_keeps_the_cells() {
    const BURST: u32 = 100;
    let server = RedisServer::start();
    server.acl_setuser("spender", "on >pw ~* &* +@all");
    let conn = connect_as(&server, "spender").await;
    let leased = hourly_on(
        &conn,
        "noperm-held",
        BURST,
        whole_batches(10),
        WhenUnavailable::Closed,
        Duration::from_secs(1),
    );
    let mut spent = check_each(&leased, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.acl_setuser("spender", "resetkeys");
    // Requests larger than a batch are decided by Redis: refused with NOPERM until the
    // breaker opens and no request reaches Redis any more.
    let mut opened = false;
    for _ in 0..50 {
        let before = evalsha_received(&server);
        assert_eq!(leased.check_n(50).await, Err(Rejected::BackendUnavailable));
        if evalsha_received(&server) == before {
            opened = true;
            break;
        }
    }
    assert!(opened, "the breaker around Redis never opened on NOPERM");
    let before = evalsha_received(&server);
    assert_eq!(
        leased.return_unspent().await,
        Err(Rejected::BackendUnavailable)
    );
    assert_eq!(
        evalsha_received(&server),
        before,
        "a give-back was sent through an open breaker"
    );
    // Kept: a held cell is spent without Redis.
    assert!(
        Admission::try_admit(&leased).is_some(),
        "the cells were given up though nothing was sent"
    );
    spent += 1;
    // Still open: kept again.
    assert_eq!(
        leased.return_unspent().await,
        Err(Rejected::BackendUnavailable)
    );
    assert_eq!(
        evalsha_received(&server),
        before,
        "sent through an open breaker"
    );
    server.acl_setuser("spender", "~*");
    let given = eventually(async || leased.return_unspent().await.ok()).await;
    assert!(given > 0, "the kept cells were given back");
    assert_unspent_free(
        &server,
        "noperm-held",
        BURST,
        spent,
        "every unspent cell is free again, none twice",
    )
    .await;
}

/// `return_unspent` gives back "after the batch being fetched, if any, has arrived": a refill
/// in flight on a slow network (every reply 150 ms late) when the give-back is asked for is
/// given back too, not held afterwards. Every unspent cell is then free in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_waits_for_the_refill_in_flight_and_returns_it_too() {
    const BURST: u32 = 200;
    let server = RedisServer::start();
    let slow = Delayed::start(&server, Duration::from_millis(150));
    let leased = hourly(
        &slow.url(),
        "refill-in-flight",
        BURST,
        whole_batches(10),
        Duration::from_secs(2),
    );
    let mut spent = check_each(&leased, 2).await;
    // Anything fetched ahead lands.
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Spend held cells until fewer than half a batch is left: the next batch is fetched in
    // the background, and takes 150 ms to arrive.
    spent += admit_held(&leased, 6);
    let given = leased.return_unspent().await.unwrap();
    assert!(given > 0);
    // Let anything that could still land, land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_unspent_free(
        &server,
        "refill-in-flight",
        BURST,
        spent,
        &format!("a batch that arrived after the give-back is held, not free (given back {given})"),
    )
    .await;
}

/// A refill and then a give-back meet a frozen Redis (SIGSTOP), which runs both once thawed:
/// whatever the replica then still spends, what it spent before and what Redis has free
/// never add up to more than the burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refill_and_a_give_back_queued_in_a_frozen_redis_never_free_a_cell_twice() {
    const BURST: u32 = 60;
    let server = RedisServer::start();
    let leased = hourly(
        &server.url(),
        "frozen-refill",
        BURST,
        whole_batches(10),
        Duration::from_millis(100),
    );
    let mut spent = check_each(&leased, 2).await;
    // One answered give-back loads the script, then one more batch.
    leased.return_unspent().await.unwrap();
    for _ in 0..2 {
        leased.check().await.unwrap();
        spent += 1;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ran = server.calls("evalsha");
    // Below half a batch: a refill goes out, and Redis freezes under it.
    spent += admit_held(&leased, 6);
    server.freeze();
    let given = leased.return_unspent().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.thaw();
    eventually(async || (server.calls("evalsha") > ran).then_some(())).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let free = drain(&server, "frozen-refill", BURST).await;
    for _ in 0..u64::from(BURST) {
        if Admission::try_admit(&leased).is_none() {
            break;
        }
        spent += 1;
    }
    // Whatever is still held goes back, and comes free once.
    eventually(async || leased.return_unspent().await.ok()).await;
    let free_later = drain_settled(&server, "frozen-refill", BURST).await;
    assert!(
        spent + free + free_later <= u64::from(BURST),
        "{spent} spent + {free} + {free_later} free of a burst of {BURST} \
         (the frozen give-back said {given:?})"
    );
}

/// "Once another replica has spent from a key made anew (after an expiry, or on a restarted
/// Redis), the give-back moves that new state back like any other, up to rest: the limit then
/// forgives up to the cells given back, within the fleet's bound": cells held from before a
/// restart, given back after another replica spent one on the restarted Redis, free at most
/// that many again, and the count is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_to_a_restarted_redis_forgives_at_most_what_it_gives() {
    const BURST: u32 = 20;
    let mut server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let leased = hourly_on(
        &conn,
        "restarted",
        BURST,
        whole_batches(10),
        WhenUnavailable::Closed,
        Duration::from_secs(1),
    );
    let exact = hourly_on(
        &conn,
        "restarted",
        BURST,
        None,
        WhenUnavailable::Closed,
        Duration::from_secs(1),
    );
    leased.check().await.unwrap();
    leased.check().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    // The shared connection reconnects; one cell spent on the restarted Redis.
    eventually(async || exact.check().await.ok()).await;
    let given = leased.return_unspent().await;
    assert!(
        matches!(given, Ok(1..)),
        "the count of cells held is the same after a restart: {given:?}"
    );
    let Ok(given) = given else { unreachable!() };
    let free = drain(&server, "restarted", BURST).await;
    assert!(
        free <= u64::from(BURST) && free <= u64::from(BURST) - 1 + given,
        "{free} free after one cell spent on the restarted Redis and {given} given back"
    );
}

/// "... and none once its key expired ... while nothing has written the key since", and
/// once another replica has, at most the cells given back: cells held while the limit's key
/// expired, given back after another replica spent a cell from rest, free at most that many
/// again. (One cell a second: what frees meanwhile by time is allowed for.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_back_after_the_key_expired_forgives_at_most_what_it_gives() {
    const BURST: u32 = 10;
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let per_second = |lease: Option<LeaseMode>| {
        let builder = RedisRateLimiter::builder(&conn, "expired", 1, Duration::from_secs(1))
            .burst(BURST)
            .deadline(Duration::from_secs(1))
            .when_unavailable(WhenUnavailable::Closed);
        match lease {
            Some(mode) => builder.lease_mode(mode),
            None => builder,
        }
        .build()
        .unwrap()
    };
    let leased = per_second(whole_batches(2));
    let exact = per_second(None);
    leased.check().await.unwrap();
    leased.check().await.unwrap();
    // Held across the key's expiry (a few seconds of rest).
    let key = leased.key().to_owned();
    eventually(async || {
        let exists: bool = redis::cmd("EXISTS")
            .arg(&key)
            .query(&mut server.admin().unwrap())
            .unwrap();
        (!exists).then_some(())
    })
    .await;
    let spent_at = Instant::now();
    exact.check().await.unwrap();
    let given = leased.return_unspent().await;
    assert!(matches!(given, Ok(1..)), "{given:?}");
    let drainer = per_second(None);
    let mut free = 0u64;
    while drainer.check().await.is_ok() {
        free += 1;
    }
    let Ok(given) = given else { unreachable!() };
    let freed_by_time = spent_at.elapsed().as_secs();
    assert!(
        free <= u64::from(BURST) && free <= u64::from(BURST) - 1 + given + freed_by_time,
        "{free} free after one cell spent from rest, {given} given back \
         ({freed_by_time} more freed by time)"
    );
}

/// Give-backs from eight clones at once: on a healthy Redis the held cells come back once
/// (the counts add up to what was held, every unspent cell is free again); on a frozen one
/// none comes back twice once it thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_give_backs_from_clones_return_each_cell_once() {
    const BURST: u32 = 200;
    let server = RedisServer::start();
    for (name, frozen) in [("concurrent-healthy", false), ("concurrent-frozen", true)] {
        let leased = hourly(
            &server.url(),
            name,
            BURST,
            whole_batches(32),
            Duration::from_millis(100),
        );
        let mut spent = check_each(&leased, 5).await;
        if frozen {
            // A first give-back loads the script; then one more batch.
            leased.return_unspent().await.unwrap();
            leased.check().await.unwrap();
            spent += 1;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if frozen {
            server.freeze();
        }
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let clone = leased.clone();
                tokio::spawn(async move { clone.return_unspent().await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        if frozen {
            server.thaw();
            for result in &results {
                assert!(
                    matches!(result, Ok(0) | Err(Rejected::BackendUnavailable)),
                    "{result:?}"
                );
            }
            assert_eq!(
                eventually(async || leased.return_unspent().await.ok()).await,
                0,
                "a give-back sent and not answered gave the cells up"
            );
            let free = drain_settled(&server, name, BURST).await;
            assert!(
                spent + free <= u64::from(BURST),
                "{spent} spent + {free} free of {BURST}: {results:?}"
            );
        } else {
            let given: u64 = results.iter().map(|r| r.unwrap()).sum();
            assert!(
                given <= 32,
                "more given back than a replica holds: {results:?}"
            );
            assert_unspent_free(&server, name, BURST, spent, &format!("{results:?}")).await;
        }
    }
}

/// The fleet bound over a whole hostile run on a one-per-hour limit (nothing frees, so the
/// exact limit is the burst): three long-lived lease replicas with different batches and an
/// exact one spend from several tasks, with decisions and give-backs cancelled at random
/// points, give-backs repeated and concurrent, short-lived replicas dropped (on the runtime
/// or on a plain thread, during freezes too), and Redis frozen (SIGSTOP) again and again.
/// Afterwards every replica gives back what it holds: what the fleet spent and what Redis
/// has free never exceed the burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_stays_within_the_burst_through_freezes_give_backs_drops_and_cancels() {
    const BURST: u32 = 20_000;
    const NAME: &str = "chaos";
    let server = RedisServer::start();
    let url = server.url();
    let deadline = Duration::from_millis(40);
    let replicas: Vec<RedisRateLimiter> = [8u32, 16, 32]
        .iter()
        .map(|&batch| {
            hourly(
                &url,
                NAME,
                BURST,
                Some(LeaseMode::new(batch).unwrap()),
                deadline,
            )
        })
        .chain(std::iter::once(hourly(&url, NAME, BURST, None, deadline)))
        .collect();
    let admitted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // Spenders: two per replica.
    for (r, replica) in replicas.iter().enumerate() {
        for t in 0..2u64 {
            let (replica, admitted, stop) =
                (replica.clone(), Arc::clone(&admitted), Arc::clone(&stop));
            tasks.push(tokio::spawn(async move {
                let mut rng = SplitMix64::new(1_000 + 10 * r as u64 + t);
                while !stop.load(Ordering::Relaxed) {
                    let cells = 1 + u32::try_from(rng.below_or_equal(2)).unwrap();
                    let outcome = match rng.below_or_equal(3) {
                        0 => replica.check().await.map(|()| 1),
                        1 => replica.check_n(cells).await.map(|()| cells),
                        2 => Admission::try_admit(&replica)
                            .map(|_| 1)
                            .ok_or(Rejected::BulkheadFull),
                        _ => {
                            let cut = Duration::from_micros(rng.below_or_equal(2_000));
                            match tokio::time::timeout(cut, replica.check_n(cells)).await {
                                Ok(outcome) => outcome.map(|()| cells),
                                Err(_) => Err(Rejected::DeadlineExceeded),
                            }
                        }
                    };
                    match outcome {
                        Ok(n) => {
                            admitted.fetch_add(u64::from(n), Ordering::Relaxed);
                            tokio::task::yield_now().await;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_micros(300)).await,
                    }
                }
            }));
        }
    }
    // Give-backs: repeated, concurrent (two tasks per lease replica) and cancelled.
    for (r, replica) in replicas.iter().take(3).enumerate() {
        for t in 0..2u64 {
            let (replica, stop) = (replica.clone(), Arc::clone(&stop));
            tasks.push(tokio::spawn(async move {
                let mut rng = SplitMix64::new(2_000 + 10 * r as u64 + t);
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(rng.below_or_equal(30))).await;
                    if rng.below_or_equal(1) == 0 {
                        let _ = replica.return_unspent().await;
                    } else {
                        let cut = Duration::from_micros(rng.below_or_equal(3_000));
                        let _ = tokio::time::timeout(cut, replica.return_unspent()).await;
                    }
                }
            }));
        }
    }
    // Short-lived replicas, their last handle dropped here or on a plain thread.
    {
        let (url, admitted, stop) = (url.clone(), Arc::clone(&admitted), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(3_000);
            while !stop.load(Ordering::Relaxed) {
                let batch = 1 + u32::try_from(rng.below_or_equal(40)).unwrap();
                let replica = hourly(
                    &url,
                    NAME,
                    BURST,
                    Some(LeaseMode::new(batch).unwrap()),
                    deadline,
                );
                for _ in 0..rng.below_or_equal(30) {
                    if replica.check().await.is_ok() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                match rng.below_or_equal(2) {
                    0 => drop(replica),
                    1 => std::thread::spawn(move || drop(replica)).join().unwrap(),
                    _ => {
                        let _ = replica.return_unspent().await;
                        drop(replica);
                    }
                }
            }
        }));
    }
    let mut rng = SplitMix64::new(4_000);
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100 + rng.below_or_equal(200))).await;
        server.freeze();
        tokio::time::sleep(Duration::from_millis(30 + rng.below_or_equal(220))).await;
        server.thaw();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for replica in &replicas {
        eventually(async || replica.return_unspent().await.ok()).await;
    }
    drop(replicas);
    let admitted = admitted.load(Ordering::Relaxed);
    let free = drain_settled(&server, NAME, BURST).await;
    assert!(admitted > 100, "the run spent only {admitted} cells");
    assert_within_burst(admitted, free, BURST);
}

/// Redis killed and restarted under three lease replicas holding whole batches: from the
/// restart on, the fleet (spending, giving back its old cells and new ones, an exact replica
/// draining) admits at most the restarted limit plus `replicas × max_batch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_fleet_admits_at_most_the_limit_plus_the_batches_held() {
    const BURST: u32 = 500;
    const MAX_BATCH: u32 = 32;
    const NAME: &str = "restart-fleet";
    let mut server = RedisServer::start();
    let url = server.url();
    let replicas: Vec<_> = (0..3)
        .map(|_| {
            hourly(
                &url,
                NAME,
                BURST,
                whole_batches(MAX_BATCH),
                Duration::from_millis(200),
            )
        })
        .collect();
    for replica in &replicas {
        replica.check().await.unwrap();
        replica.check().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    server.restart();
    // From here on, everything admitted counts against the restarted limit.
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (r, replica) in replicas.iter().enumerate() {
        let (replica, admitted) = (replica.clone(), Arc::clone(&admitted));
        tasks.push(tokio::spawn(async move {
            let mut rng = SplitMix64::new(50 + r as u64);
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(1_500) {
                if rng.below_or_equal(9) == 0 {
                    let _ = replica.return_unspent().await;
                }
                match replica.check().await {
                    Ok(()) => {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        }));
    }
    let exact = hourly(&url, NAME, BURST, None, Duration::from_millis(200));
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1_500) {
        match exact.check_n(7).await {
            Ok(()) => {
                admitted.fetch_add(7, Ordering::Relaxed);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    for replica in &replicas {
        eventually(async || replica.return_unspent().await.ok()).await;
    }
    let admitted = admitted.load(Ordering::Relaxed);
    let free = drain_settled(&server, NAME, BURST).await;
    let bound = u64::from(BURST) + 3 * u64::from(MAX_BATCH);
    assert!(
        admitted + free <= bound,
        "{admitted} spent + {free} free after the restart: the bound is {bound}"
    );
}

// ---------------------------------------------------------------------------------------
// 2. verify under the limit's own hash tag.

/// A name and a partition with every character the docs escape.
const ODD_NAME: &str = "n:{x}%";
const ODD_PARTITION: &str = "a%b:c{d}";
/// Both as the docs say they appear in a key: `%`, `:`, `{`, `}` as `%25`, `%3A`, `%7B`,
/// `%7D`.
const ODD_TAG: &str = "n%3A%7Bx%7D%25:a%25b%3Ac%7Bd%7D";

fn odd_rate(conn: &RedisConn, name: &str, partition: &str) -> RedisRateLimiter {
    RedisRateLimiter::builder(conn, name, 1, HOUR)
        .burst(3)
        .partition(partition)
        .deadline(Duration::from_secs(1))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap()
}

fn odd_bulkhead(conn: &RedisConn, name: &str, partition: &str) -> RedisBulkhead {
    RedisBulkhead::builder(conn, name, 3)
        .partition(partition)
        .deadline(Duration::from_secs(1))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap()
}

fn odd_quorum(conn: &RedisConn, name: &str, partition: &str) -> BreakerQuorum {
    BreakerQuorum::builder(conn, name, breaker())
        .partition(partition)
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// The rate limit, bulkhead and quorum under `ODD_NAME` and `ODD_PARTITION`.
fn odd_limits(conn: &RedisConn) -> (RedisRateLimiter, RedisBulkhead, BreakerQuorum) {
    (
        odd_rate(conn, ODD_NAME, ODD_PARTITION),
        odd_bulkhead(conn, ODD_NAME, ODD_PARTITION),
        odd_quorum(conn, ODD_NAME, ODD_PARTITION),
    )
}

/// What `verify` answers for each kind of limit under `name` and `partition`, one after the
/// other, labelled.
async fn verify_each(
    conn: &RedisConn,
    name: &str,
    partition: &str,
) -> [(&'static str, Result<(), ConnectError>); 3] {
    [
        ("rate", odd_rate(conn, name, partition).verify().await),
        (
            "bulkhead",
            odd_bulkhead(conn, name, partition).verify().await,
        ),
        ("quorum", odd_quorum(conn, name, partition).verify().await),
    ]
}

/// Every key each `verify` touches (as `MONITOR` shows it, in the script's calls too) is a
/// probe key (`%probe:` kind) under exactly the limit's own hash tag, escaped as the docs
/// say; the real keys carry the same tag and none is touched by a `verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_a_verify_touches_is_a_probe_under_the_limits_own_escaped_tag() {
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    let (rate, bulkhead, quorum) = odd_limits(&conn);
    let prefix = format!("tidewall:v1:{{{ODD_TAG}}}:");
    assert!(rate.key().starts_with(&prefix), "{}", rate.key());
    assert!(bulkhead.key().starts_with(&prefix), "{}", bulkhead.key());
    let monitor = Monitor::start(&server);
    Monitor::mark(&server, "s48-verify-begin");
    rate.verify().await.expect("rate");
    bulkhead.verify().await.expect("bulkhead");
    quorum.verify().await.expect("quorum");
    let lines = monitor
        .between(&server, "s48-verify-begin", "s48-verify-end")
        .await;
    let keys: Vec<&String> = lines
        .iter()
        .flatten()
        .filter(|arg| arg.starts_with("tidewall:"))
        .collect();
    assert!(!keys.is_empty(), "MONITOR saw no key: {lines:?}");
    let probe_prefix = format!("{prefix}%probe:");
    let wrong: Vec<_> = keys
        .iter()
        .filter(|key| !key.starts_with(&probe_prefix) || hash_tag(key) != Some(ODD_TAG))
        .collect();
    assert!(
        wrong.is_empty(),
        "keys a verify touched outside its probes under {{{ODD_TAG}}}: {wrong:?}"
    );
    // The real keys share that tag.
    rate.check().await.unwrap();
    let held = bulkhead.try_acquire().await.unwrap();
    quorum.refresh().await.unwrap();
    let mut admin = server.admin().unwrap();
    let real: Vec<String> = redis::cmd("KEYS")
        .arg("tidewall:*")
        .query(&mut admin)
        .unwrap();
    let real: Vec<_> = real.iter().filter(|k| !k.contains("%probe")).collect();
    assert!(real.len() >= 3, "{real:?}");
    for key in real {
        assert_eq!(hash_tag(key), Some(ODD_TAG), "{key}");
    }
    drop(held);
}

/// A user narrowed (with the crate docs' rule) to one partition whose name and partition
/// need escaping verifies and runs that partition's limits; every neighbour is refused by
/// `verify` with a permission error: a longer or shorter partition, the partition written
/// pre-escaped, the name without its `%`, and a name/partition split that reads the same
/// unescaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_narrowed_to_one_escaped_partition_verifies_that_one_only() {
    let server = RedisServer::start();
    server.acl_setuser(
        "narrow",
        &documented_rule(&format!("tidewall:v1:{{{ODD_TAG}}}*")),
    );
    let conn = connect_as(&server, "narrow").await;
    let (rate, bulkhead, quorum) = odd_limits(&conn);
    rate.verify().await.expect("rate, own partition");
    bulkhead.verify().await.expect("bulkhead, own partition");
    quorum.verify().await.expect("quorum, own partition");
    rate.check().await.expect("the limit itself works too");
    let held = bulkhead
        .try_acquire()
        .await
        .expect("the bulkhead works too");
    assert!(held.is_shared());
    quorum.refresh().await.expect("the quorum works too");
    drop(held);
    let mut wrong = Vec::new();
    for (name, partition) in [
        (ODD_NAME, "a%b:c{d}x"),
        (ODD_NAME, "a%b:c{d"),
        (ODD_NAME, "a%25b%3Ac%7Bd%7D"),
        (ODD_NAME, "default"),
        ("n:{x}", ODD_PARTITION),
        ("n", "{x}%:a%b:c{d}"),
        ("n:{x}%:a%b", "c{d}"),
    ] {
        for (what, verified) in verify_each(&conn, name, partition).await {
            if !is_permission(&verified) {
                wrong.push(format!("{what} ({name:?}, {partition:?}): {verified:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A user narrowed to one name as the crate docs say (`~tidewall:v1:{NAME:*`, `NAME` as in
/// the key, escaped) verifies that name's limits in any partition, odd ones included, and no
/// other name's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_narrowed_to_one_escaped_name_verifies_its_partitions_only() {
    let server = RedisServer::start();
    let escaped_name = ODD_TAG.split(':').next().unwrap();
    server.acl_setuser(
        "by-name",
        &documented_rule(&format!("tidewall:v1:{{{escaped_name}:*")),
    );
    let conn = connect_as(&server, "by-name").await;
    for partition in ["default", ODD_PARTITION, "}", "{", "%", ":", "%probe"] {
        for (what, verified) in verify_each(&conn, ODD_NAME, partition).await {
            verified.unwrap_or_else(|e| panic!("{what} in partition {partition:?}: {e:?}"));
        }
    }
    let mut wrong = Vec::new();
    for name in ["n:{x}", "n", "n%3A%7Bx%7D%25", "n:{x}%%", "N:{x}%"] {
        for (what, verified) in verify_each(&conn, name, "default").await {
            if !is_permission(&verified) {
                wrong.push(format!("{what} ({name:?}): {verified:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `verify` changes nothing of the real limits, byte for byte: an exhausted rate limit, a
/// bulkhead with two of three slots held and a quorum with an open report keep their keys'
/// `DUMP` and their expiry (never extended), and decide afterwards exactly as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_leaves_every_real_key_byte_for_byte() {
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    let rate = odd_rate(&conn, ODD_NAME, ODD_PARTITION);
    for _ in 0..3 {
        rate.check().await.unwrap();
    }
    let bulkhead = odd_bulkhead(&conn, ODD_NAME, ODD_PARTITION);
    let held = [
        bulkhead.try_acquire().await.unwrap(),
        bulkhead.try_acquire().await.unwrap(),
    ];
    let opened = breaker();
    opened.try_acquire().unwrap().failure();
    let quorum = BreakerQuorum::builder(&conn, ODD_NAME, opened)
        .partition(ODD_PARTITION)
        .instance("reporter")
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!(quorum.refresh().await.unwrap().open, 1);
    let before = real_state(&server);
    assert!(before.len() >= 3, "{:?}", before.keys());
    for _ in 0..3 {
        rate.verify().await.unwrap();
        bulkhead.verify().await.unwrap();
        quorum.verify().await.unwrap();
    }
    assert_unchanged(&before, &real_state(&server));
    // And they decide as before.
    let fresh = odd_rate(&conn, ODD_NAME, ODD_PARTITION);
    assert!(matches!(
        fresh.check().await,
        Err(Rejected::RateLimited { .. })
    ));
    let third = bulkhead.try_acquire().await.expect("one slot left");
    assert_eq!(
        bulkhead.try_acquire().await.map(drop),
        Err(Rejected::BulkheadFull)
    );
    drop((held, third));
}

/// `verify` on a lease-mode limiter holding cells neither gives them back nor takes a batch:
/// Redis's state is unchanged and the replica still gives back exactly what it held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_in_lease_mode_neither_takes_a_batch_nor_gives_one_back() {
    const BURST: u32 = 100;
    let server = RedisServer::start();
    let leased = hourly(
        &server.url(),
        "verify-lease",
        BURST,
        whole_batches(10),
        Duration::from_secs(1),
    );
    leased.check().await.unwrap();
    leased.check().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = real_state(&server);
    for _ in 0..3 {
        leased.verify().await.unwrap();
    }
    assert_unchanged(&before, &real_state(&server));
    let given = leased.return_unspent().await.unwrap();
    assert_eq!(
        drain(&server, "verify-lease", BURST).await,
        u64::from(BURST) - 2,
        "what was held ({given} given back) is free again, once"
    );
}

// ---------------------------------------------------------------------------------------
// 4. The failure policy under error replies.

/// Each policy, for an exact and a lease-mode rate limiter, on a connection whose every
/// limit write Redis answers with an error: `Open` admits (past the limit), `Closed` refuses
/// with `BackendUnavailable`, `Local { share: 0.5 }` decides by half the burst. A caller's own future deadline changes nothing; one already passed is
/// refused with `DeadlineExceeded`, never by the policy, `Open` included.
async fn rate_policies_decide_under_error_replies(conn: &RedisConn, tag: &str) {
    let second = Duration::from_secs(1);
    for lease in [None, whole_batches(10)] {
        let mode = if lease.is_some() { "lease" } else { "exact" };
        let name = |policy: &str| format!("{tag}-{mode}-{policy}");
        let open = hourly_on(conn, &name("open"), 2, lease, WhenUnavailable::Open, second);
        for i in 0..10 {
            assert_eq!(open.check().await, Ok(()), "{tag} {mode} open #{i}");
        }
        assert_eq!(
            open.until_ready_before(Deadline::at(Instant::now() + second))
                .await,
            Ok(()),
            "{tag} {mode} open, waiting"
        );
        assert_eq!(
            open.until_ready_before(Deadline::at(Instant::now())).await,
            Err(Rejected::DeadlineExceeded),
            "{tag} {mode}: a passed deadline answered by the open policy"
        );
        let closed = hourly_on(
            conn,
            &name("closed"),
            2,
            lease,
            WhenUnavailable::Closed,
            second,
        );
        for i in 0..10 {
            assert_eq!(
                closed.check().await,
                Err(Rejected::BackendUnavailable),
                "{tag} {mode} closed #{i}"
            );
        }
        assert_eq!(
            closed
                .until_ready_before(Deadline::at(Instant::now() + second))
                .await,
            Err(Rejected::BackendUnavailable),
            "{tag} {mode} closed, waiting"
        );
        let local = hourly_on(
            conn,
            &name("local"),
            10,
            lease,
            WhenUnavailable::Local { share: 0.5 },
            second,
        );
        let mut outcomes = Vec::new();
        for _ in 0..10 {
            outcomes.push(local.check().await);
        }
        assert!(
            outcomes[..5].iter().all(Result::is_ok)
                && outcomes[5..]
                    .iter()
                    .all(|o| matches!(o, Err(Rejected::RateLimited { .. }))),
            "{tag} {mode} local: {outcomes:?}"
        );
    }
}

/// The same for a bulkhead: `Open` admits past the limit (no lease), `Closed` refuses,
/// `Local { share: 0.5 }` holds half the slots; a passed deadline is never the policy's.
async fn bulkhead_policies_decide_under_error_replies(conn: &RedisConn, tag: &str) {
    let second = Duration::from_secs(1);
    let bulkhead = |policy: WhenUnavailable, what: &str, limit: u32| {
        RedisBulkhead::builder(conn, &format!("{tag}-bulkhead-{what}"), limit)
            .deadline(second)
            .when_unavailable(policy)
            .build()
            .unwrap()
    };
    let open = bulkhead(WhenUnavailable::Open, "open", 1);
    let mut held = Vec::new();
    for i in 0..5 {
        let permit = open
            .try_acquire()
            .await
            .unwrap_or_else(|e| panic!("{tag} bulkhead open #{i}: {e:?}"));
        assert!(!permit.is_shared(), "{tag}: a lease from a failing Redis");
        held.push(permit);
    }
    let waited = open
        .acquire_before(Deadline::at(Instant::now() + second))
        .await
        .unwrap_or_else(|e| panic!("{tag} bulkhead open, waiting: {e:?}"));
    assert!(!waited.is_shared());
    assert_eq!(
        open.acquire_before(Deadline::at(Instant::now()))
            .await
            .map(drop),
        Err(Rejected::DeadlineExceeded),
        "{tag}: a passed deadline answered by the open policy"
    );
    let closed = bulkhead(WhenUnavailable::Closed, "closed", 1);
    for i in 0..5 {
        assert_eq!(
            closed.try_acquire().await.map(drop),
            Err(Rejected::BackendUnavailable),
            "{tag} bulkhead closed #{i}"
        );
    }
    assert_eq!(
        closed
            .acquire_before(Deadline::at(Instant::now() + second))
            .await
            .map(drop),
        Err(Rejected::BackendUnavailable),
        "{tag} bulkhead closed, waiting"
    );
    let local = bulkhead(WhenUnavailable::Local { share: 0.5 }, "local", 4);
    let first = local.try_acquire().await.expect("local slot 1");
    let second_permit = local.try_acquire().await.expect("local slot 2");
    assert!(!first.is_shared() && !second_permit.is_shared());
    assert_eq!(
        local.try_acquire().await.map(drop),
        Err(Rejected::BulkheadFull),
        "{tag}: half of four slots"
    );
    drop(first);
    let again = local.try_acquire().await.expect("a local slot freed");
    drop((held, waited, second_permit, again));
}

/// After the fault is repaired, a closed limit decides through Redis again.
async fn redis_decides_again(conn: &RedisConn, tag: &str) {
    let healed = hourly_on(
        conn,
        &format!("{tag}-healed"),
        5,
        None,
        WhenUnavailable::Closed,
        Duration::from_secs(1),
    );
    eventually(async || healed.check().await.ok()).await;
}

/// `OOM` from a full Redis: the rate limiter, exact and in lease mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_replies_are_decided_by_each_policy_for_the_rate_limiter() {
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    server.fill_up();
    rate_policies_decide_under_error_replies(&conn, "oom").await;
    server.make_room();
    redis_decides_again(&conn, "oom").await;
}

/// `OOM` from a full Redis: the bulkhead. "A full Redis then answers `OOM`, and the failure
/// policy decides: a bulkhead's acquire too, as its lease is its first write": each policy
/// decides, as under any other error reply, and no lease is written past `maxmemory`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_replies_are_decided_by_each_policy_for_the_bulkhead() {
    let server = RedisServer::start();
    let conn = RedisConn::builder(server.url()).connect().await.unwrap();
    server.fill_up();
    bulkhead_policies_decide_under_error_replies(&conn, "oom").await;
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg("tidewall:*bulkhead*")
        .query(&mut server.admin().unwrap())
        .unwrap();
    assert!(
        leases.is_empty(),
        "leases written on a full Redis: {leases:?}"
    );
    server.make_room();
    redis_decides_again(&conn, "oom").await;
}

/// `NOPERM` after an ACL change under a connected limit's user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noperm_replies_after_an_acl_change_are_decided_by_each_policy() {
    let server = RedisServer::start();
    server.acl_setuser("changed", "on >pw ~* &* +@all");
    let conn = connect_as(&server, "changed").await;
    // Connected and working first.
    redis_decides_again(&conn, "noperm-before").await;
    server.acl_setuser("changed", "resetkeys ~other:*");
    rate_policies_decide_under_error_replies(&conn, "noperm").await;
    bulkhead_policies_decide_under_error_replies(&conn, "noperm").await;
    server.acl_setuser("changed", "~*");
    redis_decides_again(&conn, "noperm").await;
}

/// `READONLY` from a master demoted to a replica (`REPLICAOF`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_replies_from_a_demoted_master_are_decided_by_each_policy() {
    let master = RedisServer::start();
    let demoted = RedisServer::start();
    let conn = RedisConn::builder(demoted.url()).connect().await.unwrap();
    redis_decides_again(&conn, "readonly-before").await;
    let port = master.port().to_string();
    demoted.command(&["REPLICAOF", "127.0.0.1", &port]);
    // Demoted: writes are refused.
    eventually(async || {
        let written: redis::RedisResult<()> = redis::cmd("SET")
            .arg("probe-write")
            .arg(1)
            .query(&mut demoted.admin().unwrap());
        written
            .is_err_and(|e| e.to_string().to_ascii_uppercase().contains("READONLY"))
            .then_some(())
    })
    .await;
    rate_policies_decide_under_error_replies(&conn, "readonly").await;
    bulkhead_policies_decide_under_error_replies(&conn, "readonly").await;
    demoted.command(&["REPLICAOF", "NO", "ONE"]);
    redis_decides_again(&conn, "readonly").await;
}

// ---------------------------------------------------------------------------------------
// 5. The bulkhead's release and renewal across runtimes.

fn runtime_bulkhead(conn: &RedisConn, name: &str, limit: u32, lease: Duration) -> RedisBulkhead {
    RedisBulkhead::builder(conn, name, limit)
        .lease(lease)
        .deadline(Duration::from_millis(200))
        .when_unavailable(WhenUnavailable::Closed)
        .build()
        .unwrap()
}

/// "Dropping it releases the slot (a Redis lease in the background, on the runtime it was
/// acquired on, while that one runs)": a permit acquired here and dropped on a plain thread
/// is released well before its 30 s lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_dropped_on_a_plain_thread_is_released_on_its_runtime() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let bulkhead = runtime_bulkhead(&conn, "plain-thread", 2, Duration::from_secs(30));
    let permits = [
        bulkhead.try_acquire().await.unwrap(),
        bulkhead.try_acquire().await.unwrap(),
    ];
    assert!(permits.iter().all(|p| p.is_shared()));
    std::thread::spawn(move || drop(permits)).join().unwrap();
    // Within 10 s, of a 30 s lease: released, not expired.
    whole_limit_free(&bulkhead, 2).await;
}

/// A permit dropped inside another runtime that shuts down at once, and one held by a task
/// of another runtime when that runtime shuts down: their releases run on the runtime they
/// were acquired on, which still runs, so both slots come back well before the lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_dropped_in_another_runtime_that_ends_is_released_on_its_own() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let bulkhead = runtime_bulkhead(&conn, "other-runtime", 2, Duration::from_secs(30));
    let dropped_there = bulkhead.try_acquire().await.unwrap();
    let held_there = bulkhead.try_acquire().await.unwrap();
    assert_eq!(
        bulkhead.try_acquire().await.map(drop),
        Err(Rejected::BulkheadFull)
    );
    tokio::task::spawn_blocking(move || {
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        other.block_on(async move { drop(dropped_there) });
        drop(other);
        let other = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        other.spawn(async move {
            let _held = held_there;
            std::future::pending::<()>().await;
        });
        std::thread::sleep(Duration::from_millis(50));
        drop(other);
    })
    .await
    .unwrap();
    whole_limit_free(&bulkhead, 2).await;
}

/// "One held past its runtime's end is no longer renewed, so its lease lapses while it is
/// held": the slot goes to another replica once the lease has run out, and the permit's late
/// drop (outside any runtime) neither panics nor frees the slot its successor holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_held_past_its_runtime_lapses_and_its_late_drop_frees_nothing() {
    let server = RedisServer::start();
    let url = server.url();
    let lease = Duration::from_millis(600);
    let orphan = tokio::task::spawn_blocking(move || {
        let gone = tokio::runtime::Runtime::new().unwrap();
        let permit = gone.block_on(async {
            let conn = RedisConn::open(url).unwrap();
            let bulkhead = runtime_bulkhead(&conn, "orphan", 1, lease);
            bulkhead.try_acquire().await.unwrap()
        });
        drop(gone);
        permit
    })
    .await
    .unwrap();
    let conn = RedisConn::open(server.url()).unwrap();
    let other = runtime_bulkhead(&conn, "orphan", 1, lease);
    let successor = eventually(async || other.try_acquire().await.ok()).await;
    assert!(successor.is_shared());
    std::thread::spawn(move || drop(orphan)).join().unwrap();
    // The successor's lease is renewed here, and nobody's late release frees it.
    stays_full_for(
        &other,
        3 * lease,
        "the orphan's late drop freed its successor's slot",
    )
    .await;
    drop(successor);
    whole_limit_free(&other, 1).await;
}

/// A permit acquired here and held on a plain thread (no runtime there) for several lease
/// terms is renewed on the runtime it was acquired on: nobody else gets the slot meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_held_on_a_plain_thread_is_renewed_on_its_runtime() {
    let server = RedisServer::start();
    let conn = RedisConn::open(server.url()).unwrap();
    let lease = Duration::from_millis(600);
    let bulkhead = runtime_bulkhead(&conn, "held-elsewhere", 1, lease);
    let permit = bulkhead.try_acquire().await.unwrap();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(4 * lease);
        drop(permit);
    });
    let checker = runtime_bulkhead(
        &RedisConn::open(server.url()).unwrap(),
        "held-elsewhere",
        1,
        lease,
    );
    stays_full_for(&checker, 3 * lease, "a held permit's lease lapsed").await;
    tokio::task::spawn_blocking(move || holder.join().unwrap())
        .await
        .unwrap();
    whole_limit_free(&checker, 1).await;
}
