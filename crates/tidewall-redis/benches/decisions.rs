//! Decisions per second of the Redis rate limiter on ONE connection with 1, 16 and 64
//! concurrent tasks, with latency percentiles, next to `redis-benchmark` running the same
//! script against the same server in the same run (the ceiling: a C client with as many
//! connections as we have tasks).
//!
//! Run: `cargo bench -p tidewall-redis --bench decisions` (needs `redis-server` and
//! `redis-benchmark`; `scripts/ensure-redis` installs both). A plain `main`, not criterion:
//! the figure is a rate under concurrency over a fixed span, not the time of one call.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::RedisServer;
use hdrhistogram::Histogram;
use tidewall_redis::{RedisConn, RedisRateLimiter};

const SPAN: Duration = Duration::from_secs(3);

fn main() {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "Redis rate limiter, one connection, {} s per row; redis-benchmark runs the same EVALSHA",
        SPAN.as_secs()
    );
    let _ = writeln!(
        out,
        "{:>6}  {:>14}  {:>9}  {:>9}  redis-benchmark req/s",
        "tasks", "decisions/s", "p50 µs", "p99 µs"
    );
    for tasks in [1usize, 16, 64] {
        let (rate, p50, p99) = runtime.block_on(ours(&server, tasks));
        let ceiling = redis_benchmark(&server, tasks);
        let _ = writeln!(
            out,
            "{tasks:>6}  {rate:>14.0}  {p50:>9.0}  {p99:>9.0}  {ceiling}"
        );
    }
}

/// `tasks` tasks deciding as fast as they can on one shared connection, for [`SPAN`].
async fn ours(server: &RedisServer, tasks: usize) -> (f64, f64, f64) {
    let conn = RedisConn::open(server.url()).expect("a connection");
    // A limit no run reaches (10^6 per second, bursts of 10^6): every decision is the same
    // full round trip, and all are admitted.
    let limiter = Arc::new(
        RedisRateLimiter::builder(&conn, "bench", 1_000_000, Duration::from_secs(1))
            .deadline(Duration::from_secs(1))
            .build()
            .expect("a limiter"),
    );
    limiter.check().await.expect("warm-up: the script loaded");
    let stop = Instant::now() + SPAN;
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let limiter = Arc::clone(&limiter);
            tokio::spawn(async move {
                let mut latency =
                    Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram");
                while Instant::now() < stop {
                    let asked = Instant::now();
                    limiter.check().await.expect("admitted");
                    latency.saturating_record(
                        u64::try_from(asked.elapsed().as_nanos()).unwrap_or(u64::MAX),
                    );
                }
                latency
            })
        })
        .collect();
    let mut all = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram");
    for worker in workers {
        all.add(worker.await.expect("a worker"))
            .expect("same bounds");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let us = |q: f64| all.value_at_quantile(q) as f64 / 1e3;
    (all.len() as f64 / elapsed, us(0.5), us(0.99))
}

/// `redis-benchmark` running the limiter's script with `clients` connections.
fn redis_benchmark(server: &RedisServer, clients: usize) -> String {
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(RedisRateLimiter::script_source())
        .query(&mut server.admin().expect("admin connection"))
        .expect("SCRIPT LOAD");
    let output = Command::new("redis-benchmark")
        .args(["-p", &server.port().to_string(), "-c", &clients.to_string()])
        .args(["-n", "200000", "-q", "EVALSHA", &sha, "1", "bench-ceiling"])
        .args(["1", "1000000", "1"])
        .output();
    match output {
        // Progress lines end in '\r'; the summary reads "<command>: N requests per second,
        // p50=X msec".
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .split(['\r', '\n'])
            .find(|line| line.contains("requests per second"))
            .and_then(|line| line.rsplit(": ").next())
            .map_or_else(
                || "unreadable".to_owned(),
                |summary| summary.trim().to_owned(),
            ),
        Ok(out) => format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(error) => format!("not run: {error}"),
    }
}
