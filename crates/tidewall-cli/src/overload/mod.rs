//! `tidewall overload`: the overload simulation's scenario (docs/ADAPTIVE.md) for real, over
//! HTTP on loopback: the tour's service with a capacity, open-loop Poisson arrivals stepping
//! 0.5x → 3x → 0.5x of what it can serve, and a client that admits each request by no limit,
//! a fixed limit set right, or the adaptive limiter.

pub(crate) mod load;
pub(crate) mod summary;

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use tidewall::adaptive::{AdaptiveLimiter, Gradient2, WindowedGradient};
use tidewall::bulkhead::Bulkhead;
use tidewall::rt::{Clock, Tokio};

use crate::tour::client::Client;
use crate::tour::server::{self, Server};
use load::{Limit, Load, NoLimit, Run};
use summary::Phase;

/// Requests the dependency serves at once (C).
pub(crate) const CAPACITY: usize = 8;
/// Each request's service time (L), in milliseconds.
pub(crate) const SERVICE_MS: u64 = 80;
/// The client gives up after this many service times, as the simulation's 500 ms is
/// 25 × 20 ms.
const TIMEOUT_IN_SERVICE_TIMES: u64 = 25;
pub(crate) const TIMEOUT: Duration = Duration::from_millis(TIMEOUT_IN_SERVICE_TIMES * SERVICE_MS);
/// The middle phase's load, as a multiple of the dependency's capacity.
const PEAK: u32 = 3;
/// Descriptors past the connections': the listener, the runtimes' and stdio.
const SPARE_DESCRIPTORS: u64 = 128;

/// Descriptors the run may hold open at once, at the end of the peak phase without a limit:
/// every request of the last timeout is still open, each on a connection of its own (a
/// request given up on closes its connection), and each connection is two descriptors in
/// this process, the client's and the server's (1,328).
pub(crate) fn open_files_needed() -> u64 {
    let open = u64::from(PEAK) * CAPACITY as u64 * TIMEOUT_IN_SERVICE_TIMES;
    2 * open + SPARE_DESCRIPTORS
}

/// Requests a second the dependency completes at full use (C / L): 100.
#[allow(
    clippy::cast_precision_loss,
    reason = "small constants, exact in an f64"
)]
pub(crate) fn throughput() -> f64 {
    CAPACITY as f64 * 1000.0 / SERVICE_MS as f64
}

/// The service's route to the dependency named `key`: its own slots and queue.
pub(crate) fn path(key: &str) -> String {
    format!("/capacity/{key}/{CAPACITY}/{SERVICE_MS}")
}

/// What the dependency still holds (requests taken, not yet served, abandoned ones included).
pub(crate) fn backlog(server: &Server, key: &str) -> usize {
    server.stats.backlog(key, CAPACITY, SERVICE_MS)
}

/// The adaptive limiter every overload run uses (the command and the tour): the one place that
/// chooses its algorithm and settings. Refuses at once when full (no queue).
///
/// The windowed gradient, the strategy that meets the simulation's goal, with Envoy's defaults
/// but for its no-load measurement: 10 calls instead of 50, since at 100 calls a second and a
/// limit of 3 while it measures, 50 would take over a second of the tour's two.
pub(crate) fn adaptive_limiter<R: Clock>(rt: R) -> AdaptiveLimiter<WindowedGradient, R> {
    let algorithm = WindowedGradient::builder()
        .probe_samples(10)
        .build()
        .expect("valid windowed gradient settings");
    limiter(algorithm, rt)
}

/// Netflix's Gradient2 with bounds 1..=1,000, as in the simulation: the command's second
/// adaptive row.
pub(crate) fn gradient2_limiter<R: Clock>(rt: R) -> AdaptiveLimiter<Gradient2, R> {
    let algorithm = Gradient2::builder()
        .min_limit(1)
        .max_limit(1000)
        .build()
        .expect("valid Gradient2 settings");
    limiter(algorithm, rt)
}

fn limiter<A: tidewall::adaptive::LimitAlgorithm, R: Clock>(
    algorithm: A,
    rt: R,
) -> AdaptiveLimiter<A, R> {
    AdaptiveLimiter::builder(algorithm)
        .name("overload")
        .runtime(rt)
        .build()
        .expect("valid limiter settings")
}

/// The name of a limiter's algorithm (`WindowedGradient`), for reports.
pub(crate) fn algorithm<A, R>(_: &AdaptiveLimiter<A, R>) -> &'static str {
    let name = std::any::type_name::<A>();
    let name = name.split('<').next().unwrap_or(name);
    name.rsplit("::").next().unwrap_or(name)
}

/// A fixed limit of `n` in flight, refusing at once when full.
pub(crate) fn fixed_limit<R: Clock>(rt: R, n: usize) -> Bulkhead<R> {
    Bulkhead::builder(n)
        .reject_when_full()
        .name("overload-fixed")
        .runtime(rt)
        .build()
        .expect("valid bulkhead settings")
}

#[derive(Args, Debug)]
pub(crate) struct OverloadArgs {
    /// Seconds per phase (0.5x, 3x, then 0.5x of capacity). The default, 40 s, is 500
    /// service times, as the simulation's 10 s phases are 500 × 20 ms.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// Seeds the arrivals.
    #[arg(long, default_value_t = 20_261_205)]
    seed: u64,
}

pub(crate) fn run(args: &OverloadArgs) -> anyhow::Result<()> {
    let server = server::start()?;
    let each = Duration::from_secs(args.seconds);
    let load = Load {
        throughput: throughput(),
        phases: vec![(0.5, each), (f64::from(PEAK), each), (0.5, each)],
        timeout: TIMEOUT,
        seed: args.seed,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    print(&format!(
        "machine: {cores} cores; dependency: the tour's service on 127.0.0.1, {CAPACITY} at once, {SERVICE_MS} ms each, \
         FIFO, {:.0} requests/s at full use; client: tokio multi-thread (2 workers), timeout \
         {} ms; {} s per phase; seed {}\n\n\
         | strategy | phase | goodput (of capacity) | target | p50 | p99 | shed | timed out | \
         failed | limit at its end |\n|---|---|---|---|---|---|---|---|---|---|\n",
        throughput(),
        TIMEOUT.as_millis(),
        args.seconds,
        args.seed
    ));
    let mut notes = String::new();
    let mut lost = 0;
    let mut report = |name: &str, key: &str, run: &Run| {
        lost += run.lost;
        print(&rows(name, &summary::phases(run, &load)));
        let _ = writeln!(
            notes,
            "{name}: {} arrivals, {} admitted; left at its dependency when its last request \
             ended: {} (given up on, served anyway)",
            run.arrivals.len(),
            run.arrivals.iter().filter(|a| !a.shed).count(),
            backlog(&server, key)
        );
    };
    rt.block_on(async {
        // Each strategy against its own dependency: none inherits another's backlog.
        let run = one(&server, "no-limit", &NoLimit, &load).await;
        report("no limit", "no-limit", &run);
        let run = one(&server, "fixed", &fixed_limit(Tokio, CAPACITY), &load).await;
        report("fixed, set right (C)", "fixed", &run);
        let adaptive = adaptive_limiter(Tokio);
        let run = one(&server, "adaptive", &adaptive, &load).await;
        report(
            &format!("adaptive ({})", algorithm(&adaptive)),
            "adaptive",
            &run,
        );
        let gradient2 = gradient2_limiter(Tokio);
        let run = one(&server, "gradient2", &gradient2, &load).await;
        report(
            &format!("adaptive ({})", algorithm(&gradient2)),
            "gradient2",
            &run,
        );
    });
    print(&format!("\n{notes}"));
    anyhow::ensure!(
        lost == 0,
        "{lost} request task(s) panicked or were cancelled"
    );
    Ok(())
}

/// One strategy's run against the dependency named `key`, with a fresh client.
async fn one<L: Limit>(server: &Server, key: &str, limit: &L, load: &Load) -> Run {
    let client = Client::new(Tokio, server.addr);
    load::drive(&Tokio, &client, &path(key), limit, load).await
}

/// A strategy's rows of the table.
fn rows(name: &str, phases: &[Phase]) -> String {
    let percent = |share: f64| format!("{:.1} %", share * 100.0);
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let mut out = String::new();
    for phase in phases {
        let _ = writeln!(
            out,
            "| {name} | {:.1}x | {} | {:.0} % | {} | {} | {} | {} | {} | {} |",
            phase.load,
            percent(phase.goodput),
            phase.target * 100.0,
            ms(phase.p50),
            ms(phase.p99),
            percent(phase.shed),
            percent(phase.timed_out),
            percent(phase.failed),
            phase
                .limit
                .map_or_else(|| "none".to_owned(), |l| l.to_string()),
        );
    }
    out
}

#[allow(
    clippy::print_stdout,
    reason = "printing the table is the command's job"
)]
fn print(text: &str) {
    use std::io::Write as _;
    print!("{text}");
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::{PEAK, TIMEOUT, open_files_needed, throughput};

    /// The connections open at the peak are the peak's arrivals over one timeout.
    #[test]
    fn the_peak_needs_two_descriptors_per_request_of_the_last_timeout() {
        let open = f64::from(PEAK) * throughput() * TIMEOUT.as_secs_f64();
        assert!((open - 600.0).abs() < 1e-9, "{open}");
        assert_eq!(open_files_needed(), 2 * 600 + 128);
    }
}
