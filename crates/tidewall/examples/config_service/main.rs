//! A small quote service whose resilience policies come from a TOML file it watches.
//!
//! It shows a config `Registry` built from `tidewall.toml`, the registry's pipelines,
//! Prometheus metrics, a health page, and a live reload of the file.
//!
//! Routes:
//!
//! * `GET /quote/{symbol}`: a price from a simulated upstream, through the "quotes" pipeline
//!   (rate limit, bulkhead, retry with a retry budget, circuit breaker). 200 with the price.
//!   429 with `Retry-After` when rate limited. 503 for the other refusals (bulkhead full,
//!   circuit open, deadline). 502 when the upstream fails, 504 when it times out.
//! * `GET /quote/FAIL`: an upstream that always fails. It goes through a second pipeline,
//!   "flaky", which has no rate limit and an adaptive limit (AIMD) on calls in flight: its
//!   failures open the "flaky" breaker, lower its adaptive limit, and spend none of the
//!   quotes limit.
//! * `GET /metrics`: every metric in the Prometheus text format.
//! * `GET /health`: JSON with each policy's state. 200 "up", or 503 "degraded" while a
//!   breaker is open.
//!
//! The limit is 5 quotes an hour, all 5 at once, and its `max_wait = "0s"` refuses at once:
//! a pipeline would otherwise wait for the limiter within its deadline. The pipelines follow
//! every valid change of the file: their policies in place, and their deadline, attempt
//! timeout and retry schedule for the calls after the reload.
//!
//! By default it runs a short demo on a free port, prints what it does, and exits. It works
//! on a copy of `tidewall.toml` in a temporary directory. It sends 8 quotes (5 pass, 3 are
//! rate limited), shows the metrics and the health page, raises the limit in the file,
//! waits for the reload, and shows the new limit at work. Last, it makes the upstream fail
//! until the "flaky" breaker opens, and shows the adaptive limit the failure lowered. It
//! exits non-zero if anything is not as expected.
//!
//! ```text
//! cargo run -p tidewall --example config_service --features metrics,toml,watch
//! ```
//!
//! With `--serve` it serves on 127.0.0.1:3000 until stopped, from the file you name. Edit
//! the file while it runs to see the reload.
//!
//! ```text
//! cargo run -p tidewall --example config_service --features metrics,toml,watch -- \
//!     --serve crates/tidewall/examples/config_service/tidewall.toml
//! curl -i localhost:3000/quote/ACME
//! curl localhost:3000/metrics
//! curl localhost:3000/health
//! ```
#![allow(clippy::print_stdout)]

mod app;

use std::net::SocketAddr;
use std::time::Duration;

use app::{App, BoxError, Scrape};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Before any policy is built: each registers its metrics when it is built.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => demo(metrics).await,
        [serve, path] if serve == "--serve" => {
            // `install_recorder` starts no upkeep: without it, histogram samples pile up
            // between scrapes of a long-running service.
            let upkeep = metrics.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
            let app = App::new(path, metrics)?;
            let listener = TcpListener::bind("127.0.0.1:3000").await?;
            println!(
                "serving on http://{}, policies from {path}",
                listener.local_addr()?
            );
            app.serve(listener).await?;
            Ok(())
        }
        _ => Err("usage: config_service [--serve <tidewall.toml>]".into()),
    }
}

/// Fails with `what` unless `holds`.
fn expect(holds: bool, what: &str) -> Result<(), BoxError> {
    if holds {
        Ok(())
    } else {
        Err(format!("expected {what}").into())
    }
}

/// Prints the series `name{labels}` and checks its value.
fn show(scrape: &Scrape, name: &str, labels: &[(&str, &str)], value: u32) -> Result<(), BoxError> {
    let sample = scrape
        .find(name, labels)
        .ok_or_else(|| format!("no series {name}{labels:?} in /metrics"))?;
    println!("  {sample}");
    let want = f64::from(value);
    expect(
        sample.value.total_cmp(&want).is_eq(),
        &format!("{name}{labels:?} to be {value}"),
    )
}

/// Prints the quotes figures of `/metrics` and checks them: calls that passed and were
/// refused, refusals by the limiter, cells left.
async fn show_quotes_metrics(addr: SocketAddr, passed: u32, refused: u32) -> Result<(), BoxError> {
    let scrape = app::scrape(addr).await?;
    let calls = "tidewall_calls_total";
    let pipeline = [("policy", "pipeline"), ("name", "quotes")];
    let [policy, name] = pipeline;
    show(
        &scrape,
        calls,
        &[policy, name, ("outcome", "success")],
        passed,
    )?;
    show(
        &scrape,
        calls,
        &[policy, name, ("outcome", "rejected")],
        refused,
    )?;
    let rate = [("policy", "rate"), name, ("reason", "rate_limited")];
    show(&scrape, "tidewall_rejections_total", &rate, refused)?;
    show(&scrape, "tidewall_rate_limit_available", &[name], 0)?;
    Ok(())
}

/// Sends `n` quote requests one after the other and prints each; returns how many passed
/// and how many were rate limited.
async fn quotes(addr: SocketAddr, n: usize) -> Result<(u32, u32), BoxError> {
    let symbols = ["ACME", "GLOBEX", "INITECH", "UMBRELLA"];
    let (mut passed, mut limited) = (0, 0);
    for symbol in symbols.iter().cycle().take(n) {
        let path = format!("/quote/{symbol}");
        let reply = app::get(addr, &path).await?;
        match reply.status {
            200 => {
                passed += 1;
                println!("  GET {path} -> 200 {}", reply.body);
            }
            429 => {
                limited += 1;
                let after = reply
                    .header("retry-after")
                    .ok_or("a 429 without Retry-After")?;
                println!("  GET {path} -> 429, Retry-After: {after} s");
            }
            other => return Err(format!("GET {path} answered {other}: {}", reply.body).into()),
        }
    }
    Ok((passed, limited))
}

/// Prints `/health` and checks its status.
async fn show_health(addr: SocketAddr, status: u16, word: &str) -> Result<(), BoxError> {
    let reply = app::get(addr, "/health").await?;
    println!("  GET /health -> {} {}", reply.status, reply.body);
    expect(
        reply.status == status,
        &format!("/health to answer {status}"),
    )?;
    expect(
        reply.json()?["status"] == word,
        &format!("/health to say {word:?}"),
    )
}

/// The demo: see the module docs.
async fn demo(metrics: PrometheusHandle) -> Result<(), BoxError> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tidewall.toml");
    std::fs::write(&path, app::CONFIG)?;
    let app = App::new(&path, metrics)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(app.serve(listener));
    println!("Serving on http://{addr}, policies from {}", path.display());

    println!("\n1. Eight quotes. The limit is 5 an hour, all 5 at once.");
    let (passed, limited) = quotes(addr, 8).await?;
    expect(
        (passed, limited) == (5, 3),
        "5 quotes to pass and 3 to be limited",
    )?;

    println!("\n2. What /metrics and /health say.");
    show_quotes_metrics(addr, 5, 3).await?;
    show_health(addr, 200, "up").await?;

    println!("\n3. The file now says 20 an hour, bursts of 20. Waiting for the reload.");
    app::replace_file(&path, &app::with_quote_limit(app::CONFIG, 20, 20))?;
    let applied = [("registry", app::REGISTRY), ("outcome", "applied")];
    let reloads = "tidewall_config_reloads_total";
    let scrape = app::wait_for(addr, reloads, &applied, 1.0, Duration::from_secs(10)).await?;
    let sample = scrape.find(reloads, &applied).ok_or("no reload counted")?;
    println!("  {sample}");
    let health = app::get(addr, "/health").await?.json()?;
    let limiter = &health["rate_limiters"]["quotes"];
    println!("  GET /health -> rate_limiters.quotes = {limiter}");
    expect(limiter["burst"] == 20, "a burst of 20 after the reload")?;
    expect(limiter["available"] == 15, "15 cells left after the reload")?;

    println!("\n4. Sixteen more quotes. The 5 spent stay spent: 15 of the 20 are left.");
    let (passed, limited) = quotes(addr, 16).await?;
    expect(
        (passed, limited) == (15, 1),
        "15 quotes to pass and 1 to be limited",
    )?;
    show_quotes_metrics(addr, 20, 4).await?;

    println!(
        "\n5. The upstream fails: 3 attempts, 3 failures in a row open the breaker, and the \
         failed call lowers the adaptive limit."
    );
    for want in [502, 503] {
        let reply = app::get(addr, "/quote/FAIL").await?;
        println!("  GET /quote/FAIL -> {} {}", reply.status, reply.body);
        expect(
            reply.status == want,
            &format!("/quote/FAIL to answer {want}"),
        )?;
    }
    let scrape = app::scrape(addr).await?;
    let open = [("name", "flaky"), ("state", "open")];
    show(&scrape, "tidewall_breaker_state", &open, 1)?;
    // The failed call was a drop for the adaptive limit: 8 × 0.9.
    show(&scrape, "tidewall_adaptive_limit", &[("name", "flaky")], 7)?;
    show_health(addr, 503, "degraded").await?;

    server.abort();
    println!("\nEvery expectation held.");
    Ok(())
}
