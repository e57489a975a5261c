//! A real redis-server for the tests: started on a free loopback port in a temporary
//! directory, with the fault injections the tests need (pause, stop, kill, restart).
//!
//! A missing `redis-server` fails the test with instructions: these tests never skip.

#![allow(dead_code)] // each test binary uses part of it

pub(crate) mod gate;
pub(crate) mod metrics;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Polls `attempt` until it gives a value (within 10 s): for what happens in the background
/// or after a fault heals. Kept at 10 s, not longer, on purpose: several tests prove that
/// nothing leaked by getting every slot back within it while a leaked lease lasts 30 s
/// (`hostile_bulkhead_shared.rs`, [`whole_limit_free`]); a longer poll would wait a leak out.
pub(crate) async fn eventually<T>(mut attempt: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(done) = attempt().await {
            return done;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never happened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Asks, with a deadline that has already passed, until Redis answers within the one round
/// trip of at most 1 ms such a caller gets (a loaded machine may not run redis-server that
/// soon); each miss must be `DeadlineExceeded`, never the failure policy's answer. Asks for
/// up to 20 s: a miss cut after Redis ran the script may have spent a cell that takes up to
/// 10 s to come back in these tests. The answer.
pub(crate) async fn answered_past_deadline<T>(
    mut ask: impl AsyncFnMut() -> Result<T, tidewall::Rejected>,
) -> T {
    let started = Instant::now();
    loop {
        match ask().await {
            Ok(answer) => return answer,
            Err(missed) => assert_eq!(missed, tidewall::Rejected::DeadlineExceeded),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "Redis never answered a caller past its deadline in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What one decision of [`ask_until`] said, when it was asked and how long it took.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decision {
    pub(crate) at: Instant,
    pub(crate) took: Duration,
    pub(crate) outcome: Result<(), tidewall::Rejected>,
}

/// Asks `limiter` as fast as it allows until `stop`: sleeps out each `RateLimited` refusal's
/// `retry_after`, and yields after any other refusal (Redis away), so a runtime shutting
/// down (a failed test) can stop the loop.
pub(crate) async fn ask_until(
    limiter: tidewall_redis::RedisRateLimiter,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<Decision> {
    let mut decisions = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let at = Instant::now();
        let outcome = limiter.check().await;
        decisions.push(Decision {
            at,
            took: at.elapsed(),
            outcome,
        });
        match outcome {
            Err(tidewall::Rejected::RateLimited { retry_after }) => {
                tokio::time::sleep(retry_after).await;
            }
            Err(_) => tokio::task::yield_now().await,
            Ok(()) => {}
        }
    }
    decisions
}

/// A rate limit of `cells` per `period`, bursts of `burst`, failing closed, in lease mode with
/// batches of at most `lease` or exact. A slow limit keeps exact counts exact however slowly
/// a loaded host runs the test (no cell frees meanwhile).
pub(crate) fn limiter_per(
    server: &RedisServer,
    name: &str,
    cells: u32,
    period: Duration,
    burst: u32,
    lease: Option<u32>,
) -> tidewall_redis::RedisRateLimiter {
    let conn = tidewall_redis::RedisConn::open(server.url()).unwrap();
    let builder = tidewall_redis::RedisRateLimiter::builder(&conn, name, cells, period)
        .burst(burst)
        .deadline(Duration::from_secs(1))
        .when_unavailable(tidewall_redis::WhenUnavailable::Closed);
    match lease {
        Some(max_batch) => builder.lease_mode(tidewall_redis::LeaseMode::new(max_batch).unwrap()),
        None => builder,
    }
    .build()
    .unwrap()
}

/// A rate limit of one cell an hour on `partition` of `name`, bursts of `burst`: exact counts
/// stay exact however slowly a loaded host runs the test (no cell frees meanwhile).
pub(crate) fn hourly(
    conn: &tidewall_redis::RedisConn,
    name: &str,
    partition: &str,
    burst: u32,
    policy: tidewall_redis::WhenUnavailable,
    deadline: Duration,
) -> tidewall_redis::RedisRateLimiter {
    tidewall_redis::RedisRateLimiter::builder(conn, name, 1, Duration::from_secs(3600))
        .burst(burst)
        .partition(partition)
        .deadline(deadline)
        .when_unavailable(policy)
        .build()
        .unwrap()
}

/// Until all `limit` permits of `bulkhead` are taken at once (nothing leaked: leases released
/// in the background are eventually free), then one more is refused; the permits are
/// released on return.
pub(crate) async fn whole_limit_free(bulkhead: &tidewall_redis::RedisBulkhead, limit: usize) {
    let mut again = Vec::new();
    eventually(async || {
        if let Ok(permit) = bulkhead.try_acquire().await {
            again.push(permit);
        }
        (again.len() == limit).then_some(())
    })
    .await;
    assert_eq!(
        bulkhead.try_acquire().await.map(drop),
        Err(tidewall::Rejected::BulkheadFull),
        "more than the limit of {limit}"
    );
}

/// A port nothing listens on (free when asked for): connecting to it is refused at once.
pub(crate) fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

/// A connection to a port nothing listens on: every call fails at once.
pub(crate) fn unreachable_conn() -> tidewall_redis::RedisConn {
    tidewall_redis::RedisConn::open(format!("redis://127.0.0.1:{}", closed_port()))
        .expect("a valid URL")
}

pub(crate) struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// A server on a free port. The port is free when asked for, but another test's server
    /// may take it before ours binds it (then ours exits at once): a few fresh ports are
    /// tried before giving up.
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut server = Self {
            port: 0,
            child: None,
            dir,
        };
        for _ in 0..5 {
            server.port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            if server.try_spawn().is_ok() {
                return server;
            }
        }
        server.spawn();
        server
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        if let Err(status) = self.try_spawn() {
            panic!("redis-server on port {} exited: {status}", self.port);
        }
    }

    /// Starts redis-server on `self.port` and waits for it; its exit status if it stopped
    /// at once (the port was taken).
    fn try_spawn(&mut self) -> Result<(), std::process::ExitStatus> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting redis-server: {e}. Install it (Debian: apt-get install redis-server); ./scripts/test and .ci/run do"
                )
            });
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(status);
            }
            // Ours, not another test's server that took the port meanwhile: it works in
            // our directory.
            if self.ping().is_ok() && self.dir_is_ours() {
                return Ok(());
            }
            // A hang guard only: a loaded 2-core machine may take seconds to start it.
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "redis-server did not answer on port {} within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A synchronous connection, for set-up and fault injection.
    pub(crate) fn admin(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(1))
    }

    /// Runs `args` (the command and its arguments) on an admin connection; panics on an
    /// error reply.
    pub(crate) fn command(&self, args: &[&str]) {
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        let _: redis::Value = command
            .query(&mut self.admin().expect("admin connection"))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }

    /// `ACL SETUSER user <rules>` (rules separated by white space).
    pub(crate) fn acl_setuser(&self, user: &str, rules: &str) {
        let mut args = vec!["ACL", "SETUSER", user];
        args.extend(rules.split_whitespace());
        self.command(&args);
    }

    /// Full to its `maxmemory` under `noeviction`: every write answered `OOM`.
    pub(crate) fn fill_up(&self) {
        self.command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
        self.command(&["CONFIG", "SET", "maxmemory", "1"]);
    }

    /// No `maxmemory` (after [`fill_up`](Self::fill_up)): writes fit again.
    pub(crate) fn make_room(&self) {
        self.command(&["CONFIG", "SET", "maxmemory", "0"]);
    }

    /// `ZCARD key`: how many leases the bulkhead whose leases are at `key` holds.
    pub(crate) fn zcard(&self, key: &str) -> u64 {
        redis::cmd("ZCARD")
            .arg(key)
            .query(&mut self.admin().expect("admin connection"))
            .expect("ZCARD")
    }

    fn dir_is_ours(&self) -> bool {
        let dir: redis::RedisResult<Vec<String>> = self
            .admin()
            .and_then(|mut c| redis::cmd("CONFIG").arg("GET").arg("dir").query(&mut c));
        let ours = self.dir.path().canonicalize().ok();
        dir.ok()
            .and_then(|pair| pair.get(1).cloned())
            .is_some_and(|dir| std::path::Path::new(&dir).canonicalize().ok() == ours)
    }

    fn ping(&self) -> redis::RedisResult<String> {
        redis::cmd("PING").query(&mut self.admin()?)
    }

    /// `CLIENT PAUSE ms ALL`: every client's commands wait until it ends.
    pub(crate) fn pause_clients(&self, pause: Duration) {
        let ms = u64::try_from(pause.as_millis()).expect("a short pause");
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(ms)
            .arg("ALL")
            .query(&mut self.admin().expect("admin connection"))
            .expect("CLIENT PAUSE");
    }

    /// Until the bulkhead whose leases are at `key` holds none (releases run in the
    /// background).
    pub(crate) async fn until_no_lease(&self, key: &str) {
        eventually(async || (self.zcard(key) == 0).then_some(())).await;
    }

    /// How many times a command ran (`INFO commandstats`), e.g. `"evalsha"`.
    pub(crate) fn calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.admin().expect("admin connection"))
            .expect("INFO commandstats");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().expect("a call count"))
    }

    /// Redis's clock, in µs.
    pub(crate) fn time_us(&self) -> u64 {
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query(&mut self.admin().expect("admin connection"))
            .expect("TIME");
        secs * 1_000_000 + micros
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let child = self.child.as_ref().expect("a running server");
        let pid = rustix::process::Pid::from_child(child);
        rustix::process::kill_process(pid, signal).expect("signalling redis-server");
    }

    /// SIGSTOP: the server holds its connections and answers nothing.
    pub(crate) fn freeze(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// SIGCONT after [`freeze`](Self::freeze).
    pub(crate) fn thaw(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    /// Kills the server (connections reset, the port closed).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A fresh server on the same port (its data gone).
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen server would ignore SIGKILL's delivery order otherwise.
            let pid = rustix::process::Pid::from_child(child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
        }
        self.kill();
    }
}

/// A TCP proxy to a server that holds each reply `delay` before passing it on (requests go
/// through at once): a healthy Redis behind a slow network, every round trip `delay` long.
/// Stops taking connections when dropped.
pub(crate) struct Delayed {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Delayed {
    pub(crate) fn start(server: &RedisServer, delay: Duration) -> Self {
        use std::io::{Read, Write};
        use std::net::TcpStream;
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stopped, upstream) = (std::sync::Arc::clone(&stop), server.port());
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
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (Ok(mut requests), Ok(mut to_server)) =
                    (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                let (mut replies, mut to_client) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut requests, &mut to_server);
                });
                // Replies are read as they come and written `delay` later, in order.
                let (due, held) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 16 * 1024];
                    while let Ok(n @ 1..) = replies.read(&mut buffer) {
                        if due
                            .send((Instant::now() + delay, buffer[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                std::thread::spawn(move || {
                    for (at, bytes) in held {
                        std::thread::sleep(at.saturating_duration_since(Instant::now()));
                        if to_client.write_all(&bytes).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { port, stop }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Delayed {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        // Wakes the accepting thread, which then sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}
