//! Goodput, latency and load on a failing host: Tidewall's middleware against reqwest-retry,
//! on loopback, in the same run (`harness = false`: it prints one table).
//!
//! Two hosts, served by hyper on a thread of their own: `flaky` answers 503 to 30 % of
//! attempts (each attempt independently, from a seeded generator, so every run sees the same
//! sequence), `healthy` always answers 200. Each client sends `REQUESTS` GETs to each host, one
//! at a time, alternating. Both retry up to 2 times with exponential backoff from 2 ms to
//! 20 ms and full jitter. The rows:
//!
//! * `reqwest-retry`: `RetryTransientMiddleware`, no budget: every 503 is retried.
//! * `tidewall, no budget`: the standard stack with the retry budget off: the same retries,
//!   plus the breaker, bulkhead and timeouts per host.
//! * `tidewall, standard`: the standard stack, whose retry budget lets retries add at most
//!   20 % of a host's calls (plus 10 per second).
//!
//! Expected: without a budget a request fails only when all 3 attempts fail (0.3³ = 2.7 %), and
//! the flaky host sees 1 + 0.3 + 0.09 = 1.39 attempts per request. The budget trades goodput
//! for load: the flaky host sees at most about 1.2 attempts per request. The breaker (opening
//! at a 50 % failure rate) stays closed at 30 %.
//!
//! Run: `cargo bench -p tidewall-benches --bench http_faults`.
#![allow(clippy::print_stdout)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use tidewall::http::ClientPolicies;
use tidewall::{Backoff, Jitter};
use tidewall_reqwest::Resilience;

const REQUESTS: usize = 2_000;
const FAIL_PER_MILLE: u64 = 300;

/// A host: answers 503 to `fail_per_mille` ‰ of attempts, drawn from a seeded generator.
struct Host {
    addr: SocketAddr,
    attempts: Arc<AtomicU64>,
}

fn start_host(runtime: &tokio::runtime::Runtime, fail_per_mille: u64, seed: u64) -> Host {
    let attempts = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&attempts);
    let state = Arc::new(AtomicU64::new(seed));
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    runtime.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let (counted, state) = (Arc::clone(&counted), Arc::clone(&state));
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    counted.fetch_add(1, Relaxed);
                    let draw = splitmix(&state) % 1000;
                    let status = if draw < fail_per_mille { 503 } else { 200 };
                    async move {
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .expect("a valid response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Host { addr, attempts }
}

/// SplitMix64 on a shared state: one draw per attempt, the same sequence every run.
fn splitmix(state: &AtomicU64) -> u64 {
    let mut z = state
        .fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Row {
    name: &'static str,
    goodput: f64,
    healthy_goodput: f64,
    attempts_per_request: f64,
    p50: Duration,
    p99: Duration,
}

async fn drive(
    name: &'static str,
    client: &ClientWithMiddleware,
    flaky: &Host,
    healthy: &Host,
) -> Row {
    let before = flaky.attempts.load(Relaxed);
    let (mut ok, mut healthy_ok, mut latencies) = (0, 0, Vec::with_capacity(REQUESTS));
    for _ in 0..REQUESTS {
        let start = Instant::now();
        let answered = client.get(format!("http://{}/", flaky.addr)).send().await;
        if let Ok(response) = answered {
            ok += usize::from(response.status().is_success());
            let _ = response.bytes().await;
        }
        latencies.push(start.elapsed());
        let answered = client.get(format!("http://{}/", healthy.addr)).send().await;
        if let Ok(response) = answered {
            healthy_ok += usize::from(response.status().is_success());
            let _ = response.bytes().await;
        }
    }
    latencies.sort_unstable();
    let at =
        |per_mille: usize| latencies[(latencies.len() * per_mille / 1000).min(latencies.len() - 1)];
    Row {
        name,
        goodput: ok as f64 / REQUESTS as f64,
        healthy_goodput: healthy_ok as f64 / REQUESTS as f64,
        attempts_per_request: (flaky.attempts.load(Relaxed) - before) as f64 / REQUESTS as f64,
        p50: at(500),
        p99: at(990),
    }
}

fn tidewall(budget: bool) -> ClientWithMiddleware {
    let mut policies = ClientPolicies::builder().retry(
        Backoff::exponential(Duration::from_millis(2))
            .max_delay(Duration::from_millis(20))
            .jitter(Jitter::Full)
            .max_attempts(3)
            .build()
            .expect("valid"),
    );
    if !budget {
        policies = policies.retry_budget(None);
    }
    let policies = policies.build().expect("valid");
    ClientBuilder::new(reqwest::Client::new())
        .with(Resilience::new(policies))
        .build()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: run only when benched.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut rows = Vec::new();
    for (seed, name) in [
        (1, "reqwest-retry"),
        (1, "tidewall, no budget"),
        (1, "tidewall, standard"),
    ] {
        // Every row meets the same sequence of failures.
        let flaky = start_host(&server, FAIL_PER_MILLE, seed);
        let healthy = start_host(&server, 0, seed);
        let stack = match name {
            "reqwest-retry" => ClientBuilder::new(reqwest::Client::new())
                .with(RetryTransientMiddleware::new_with_policy(
                    ExponentialBackoff::builder()
                        .retry_bounds(Duration::from_millis(2), Duration::from_millis(20))
                        .build_with_max_retries(2),
                ))
                .build(),
            "tidewall, no budget" => tidewall(false),
            _ => tidewall(true),
        };
        rows.push(client.block_on(drive(name, &stack, &flaky, &healthy)));
    }
    println!("{REQUESTS} requests to each host; the flaky one fails 30 % of attempts\n");
    println!(
        "| client | flaky host: goodput | attempts per request | p50 | p99 | healthy host: goodput |"
    );
    println!("|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {:.1} % | {:.2} | {:.2} ms | {:.2} ms | {:.1} % |",
            row.name,
            row.goodput * 100.0,
            row.attempts_per_request,
            row.p50.as_secs_f64() * 1e3,
            row.p99.as_secs_f64() * 1e3,
            row.healthy_goodput * 100.0,
        );
    }
}
