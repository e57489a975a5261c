//! `tidewall tour`: measured scenarios of the main patterns (the README lists which), most of
//! them against a real HTTP service on loopback.

mod capacity;
pub(crate) mod client;
mod config;
mod http_client;
mod overload;
mod pool;
mod redis;
mod report;
mod resilience;
mod scenarios;
pub(crate) mod server;
mod service;
mod streams;
mod tasks;
mod tower;

use std::time::Instant;

use anyhow::bail;
use clap::{Args, ValueEnum};
use tidewall::rt::{AsyncStd, SmolRuntime, Tokio};

use report::Report;

/// The worker thread count used for multi-threaded runtimes, equal on each.
const WORKER_THREADS: usize = 2;

#[derive(Args, Debug)]
pub(crate) struct TourArgs {
    /// The runtime the client side of every scenario runs on.
    #[arg(long, value_enum, default_value_t = RuntimeChoice::Tokio)]
    runtime: RuntimeChoice,
    /// Smaller workloads, for CI.
    #[arg(long)]
    quick: bool,
    /// Print machine-readable JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Also run three sections through this Redis (`redis://127.0.0.1:6379`): three simulated
    /// replicas share a rate limit and a bulkhead, and decide a hot limit exactly and in lease
    /// mode.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// The same three sections on a Redis Cluster reached first through these nodes
    /// (`redis://127.0.0.1:7000,redis://127.0.0.1:7001`).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    redis_cluster: Vec<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum RuntimeChoice {
    /// tokio, multi-thread scheduler with 2 workers.
    Tokio,
    /// tokio, current-thread scheduler.
    TokioCurrent,
    /// smol: an explicit executor on 2 worker threads.
    Smol,
    /// async-std (legacy: discontinued upstream), its global executor.
    AsyncStd,
}

impl RuntimeChoice {
    fn describe(self) -> String {
        match self {
            Self::Tokio => format!("tokio multi-thread ({WORKER_THREADS} workers)"),
            Self::TokioCurrent => "tokio current-thread".into(),
            Self::Smol => format!("smol explicit executor ({WORKER_THREADS} worker threads)"),
            Self::AsyncStd => "async-std (legacy, discontinued upstream; global executor)".into(),
        }
    }
}

pub(crate) fn run(args: &TourArgs) -> anyhow::Result<()> {
    let server = server::start()?;
    let size = if args.quick {
        scenarios::Size::Quick
    } else {
        scenarios::Size::Full
    };
    let started = Instant::now();
    let mut sections = match args.runtime {
        RuntimeChoice::Tokio => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKER_THREADS)
                .enable_all()
                .build()?;
            rt.block_on(tour(Tokio, &server, size))
        }
        RuntimeChoice::TokioCurrent => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(tour(Tokio, &server, size))
        }
        RuntimeChoice::Smol => {
            let rt = SmolRuntime::multi_threaded(WORKER_THREADS)?;
            rt.block_on(tour(rt.handle(), &server, size))
        }
        RuntimeChoice::AsyncStd => async_std::task::block_on(tour(AsyncStd, &server, size)),
    };
    if let Some(url) = &args.redis {
        sections.extend(redis::all(&redis::Target::Server(url.clone()), size)?);
    }
    if !args.redis_cluster.is_empty() {
        let target = redis::Target::Cluster(args.redis_cluster.clone());
        sections.extend(redis::all(&target, size)?);
    }
    let report = Report {
        runtime: args.runtime.describe(),
        quick: args.quick,
        total: started.elapsed(),
        sections,
    };
    if args.json {
        report.print_json()?;
    } else {
        report.print_tables();
    }
    let failed = report.failed_checks();
    if !failed.is_empty() {
        bail!("{} check(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

/// Every section, in order: the basic scenarios, the resilience policies (the adaptive limiter
/// under overload after the configuration reload), streams, tasks, then
/// supervision and a signal-driven shutdown (last: it leaves a signal handler installed).
async fn tour<R: client::Net>(
    rt: R,
    server: &server::Server,
    size: scenarios::Size,
) -> Vec<report::Section> {
    let mut sections = scenarios::all(rt.clone(), server, size).await;
    sections.extend(resilience::all(rt.clone(), server, size).await);
    sections.extend(tower::all(rt.clone(), server, size).await);
    sections.extend(http_client::all(rt.clone(), server, size).await);
    sections.extend(config::all(rt.clone(), server, size).await);
    sections.extend(overload::all(rt.clone(), server, size).await);
    sections.extend(streams::all(rt.clone(), size).await);
    sections.extend(tasks::all(rt.clone(), size).await);
    sections.extend(service::all(rt).await);
    sections
}
