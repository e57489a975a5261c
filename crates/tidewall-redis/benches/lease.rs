//! Lease mode against exact mode: three replica processes share one rate limit through a
//! real Redis, each deciding as fast as it can; decisions per second per replica, and the
//! fleet's admitted cells against the limit and the documented bound, same run.
//!
//! The limit is 100 000 cells/s with bursts of 1 000; lease mode's batches are at most 1 000
//! cells (so the bound allows 3 × 1 000 extra over any window). Each replica is its own
//! process (this binary run again with `--replica`) on a tokio runtime of 2 workers, one task
//! calling `check()` in a loop (yielding every 256 calls, as a service's task would between
//! requests); a refusal is counted and the loop goes on at once.
//!
//! Run: `cargo bench -p tidewall-redis --bench lease` (needs `redis-server`; scripts/ensure-redis).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::RedisServer;
use tidewall::Rejected;
use tidewall_redis::{LeaseMode, RedisConn, RedisRateLimiter};

const SPAN: Duration = Duration::from_secs(5);
const PER_SECOND: u32 = 100_000;
const BURST: u32 = 1_000;
const MAX_BATCH: u32 = 1_000;
const REPLICAS: usize = 3; // the bound's `3 ×` below

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|arg| arg == "--replica") {
        replica(&args[at + 1], &args[at + 2], &args[at + 3]);
        return;
    }
    let server = RedisServer::start();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{REPLICAS} replica processes, limit {PER_SECOND}/s (burst {BURST}), {} s per mode",
        SPAN.as_secs()
    );
    let _ = writeln!(
        out,
        "{:>6}  {:>32}  {:>16}  {:>14}  {:>9}",
        "mode", "decisions/s per replica", "admitted/s (all)", "allowed (exact)", "excess"
    );
    for mode in ["exact", "lease"] {
        let name = format!("lease-bench-{mode}-{}", std::process::id());
        let children: Vec<_> = (0..REPLICAS)
            .map(|_| {
                Command::new(std::env::current_exe().expect("this binary"))
                    .args(["--replica", mode, &server.url(), &name])
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("a replica process")
            })
            .collect();
        let mut rates = Vec::new();
        let (mut admitted, mut longest) = (0u64, 0f64);
        for child in children {
            let output = child.wait_with_output().expect("the replica's report");
            let report = String::from_utf8_lossy(&output.stdout);
            let fields: Vec<&str> = report.split_whitespace().collect();
            let [decisions, admitted_here, seconds] = fields[..] else {
                panic!("a replica reported {report:?}")
            };
            let decisions: u64 = decisions.parse().expect("a count");
            let seconds: f64 = seconds.parse().expect("seconds");
            rates.push(decisions as f64 / seconds);
            admitted += admitted_here.parse::<u64>().expect("a count");
            longest = longest.max(seconds);
        }
        // GCRA from rest over the longest replica's span (they overlap within it).
        let allowed = f64::from(BURST) + longest * f64::from(PER_SECOND) + 1.0;
        let rates: Vec<String> = rates.iter().map(|rate| format!("{rate:.0}")).collect();
        let _ = writeln!(
            out,
            "{mode:>6}  {:>32}  {:>16.0}  {:>14.0}  {:>9.0}",
            rates.join(" "),
            admitted as f64 / longest,
            allowed,
            admitted as f64 - allowed,
        );
    }
    let _ = writeln!(
        out,
        "(excess: admitted beyond exact GCRA over the span; lease mode's bound is {} = {REPLICAS} × {MAX_BATCH}, plus a round trip's cells)",
        3 * MAX_BATCH
    );
}

/// One replica: decides for [`SPAN`], prints `decisions admitted seconds`.
fn replica(mode: &str, url: &str, name: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (decisions, admitted, seconds) = runtime.block_on(async {
        let conn = RedisConn::builder(url)
            .connect()
            .await
            .expect("a connection");
        let builder = RedisRateLimiter::builder(&conn, name, PER_SECOND, Duration::from_secs(1))
            .burst(BURST)
            .deadline(Duration::from_millis(100));
        let limiter = match mode {
            "lease" => builder.lease_mode(LeaseMode::new(MAX_BATCH).expect("a batch")),
            _ => builder,
        }
        .build()
        .expect("a limiter");
        let started = Instant::now();
        let (mut decisions, mut admitted) = (0u64, 0u64);
        while started.elapsed() < SPAN {
            for _ in 0..256 {
                match limiter.check().await {
                    Ok(()) => admitted += 1,
                    Err(Rejected::RateLimited { .. }) => {}
                    Err(other) => panic!("{other:?}"),
                }
                decisions += 1;
            }
            tokio::task::yield_now().await;
        }
        let seconds = started.elapsed().as_secs_f64();
        limiter.return_unspent().await.expect("cells given back");
        (decisions, admitted, seconds)
    });
    let _ = writeln!(std::io::stdout(), "{decisions} {admitted} {seconds}");
}
