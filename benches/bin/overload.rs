//! The overload simulation's full form: every strategy through 0.5x → 3x → 0.5x capacity,
//! as tables (see `tidewall_benches::overload` for the model).
//!
//! `cargo run --release -p tidewall-benches --bin overload [-- [loopback] <seconds per phase> <seed> [<svg dir>]]`
//!
//! With `loopback` first, the dependency is the loopback run's (`tidewall overload`): 8 at once,
//! 80 ms each, a 2 s client timeout, for comparing the two.
//!
//! With a directory, it also writes `goodput.svg`, `p99.svg` and `limit.svg` there: each
//! strategy's value per 100 ms window. Last, a table of the windowed gradient under a mix of
//! priorities: which requests the shedding falls on, with and without shares.

// A report printer: its output is the point.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use tidewall_benches::overload::{
    Prioritized, Scenario, Tidewall, Window, goodput_percent, limit, p99_ms, simulate, strategies,
    svg_chart,
};
use tidewall_core::adaptive::WindowedGradient;

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let loopback = args.next_if(|a| a == "loopback").is_some();
    let each = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_u64);
    let seed = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_261_205_u64);
    let mut scenario = Scenario::steps(Duration::from_secs(each), seed);
    if loopback {
        scenario = scenario.with_dependency(8, Duration::from_millis(80), Duration::from_secs(2));
    }
    println!(
        "dependency: {} at once, {:?} each (± 10 %), {:.0} requests/s at full use; client timeout {:?}; {each} s per phase; seed {seed}",
        scenario.capacity,
        scenario.service,
        scenario.throughput(),
        scenario.timeout,
    );
    println!();
    println!(
        "| strategy | phase | goodput (of capacity) | target | p50 | p99 | shed | timed out | settled after |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let svg_dir = args.next();
    let mut runs = Vec::new();
    for (name, mut strategy) in strategies(&scenario) {
        let run = simulate(&scenario, strategy.as_mut());
        for phase in run.phases() {
            let settle = phase.settle.map_or_else(
                || "never".to_owned(),
                |d| format!("{:.1} s", d.as_secs_f64()),
            );
            println!(
                "| {name} | {:.1}x | {:.1} % | {:.0} % | {:.1} ms | {:.1} ms | {:.1} % | {:.1} % | {settle} |",
                phase.load,
                phase.goodput * 100.0,
                phase.target * 100.0,
                phase.p50_ms,
                phase.p99_ms,
                phase.shed * 100.0,
                phase.timed_out * 100.0,
            );
        }
        runs.push((name, run));
    }
    if let Some(dir) = svg_dir {
        let runs: Vec<_> = runs
            .iter()
            .filter(|(name, _)| *name != "no limit" && !name.starts_with("fixed, too"))
            .map(|(name, run)| (*name, run))
            .collect();
        let charts = [
            (
                "goodput.svg",
                "Goodput per 100 ms (0.5x → 3x → 0.5x capacity)",
                "% of capacity",
                goodput_percent as fn(&Scenario, &Window) -> f64,
            ),
            ("p99.svg", "p99 latency per 100 ms", "ms", p99_ms),
            ("limit.svg", "The limit", "requests in flight", limit),
        ];
        for (file, title, unit, value) in charts {
            let path = std::path::Path::new(&dir).join(file);
            std::fs::write(&path, svg_chart(title, unit, &runs, value))
                .expect("the chart is written");
            println!("wrote {}", path.display());
        }
    }
    priorities(&scenario);
}

/// The windowed gradient under a mix of priorities, with and without shares: which requests
/// the shedding falls on.
fn priorities(scenario: &Scenario) {
    const MIX: [f64; 3] = [0.2, 0.5, 0.3];
    const SHARES: [f64; 3] = [1.0, 0.9, 0.5];
    let scenario = scenario.clone().with_mix(MIX);
    println!();
    println!(
        "Priorities: the windowed gradient, traffic {:.0} % critical, {:.0} % default, {:.0} % sheddable",
        MIX[0] * 100.0,
        MIX[1] * 100.0,
        MIX[2] * 100.0
    );
    println!();
    println!("| shares | phase | priority | offered | shed | answered in time |");
    println!("|---|---|---|---|---|---|");
    for shares in [[1.0; 3], SHARES] {
        let algorithm = WindowedGradient::builder().build().expect("valid");
        let mut strategy = Prioritized {
            inner: Tidewall(Box::new(algorithm)),
            shares,
        };
        let run = simulate(&scenario, &mut strategy);
        for ((load, _), phase) in scenario.phases.iter().zip(run.priorities()) {
            for p in phase {
                println!(
                    "| {} / {} / {} | {load:.1}x | {} | {:.2}x | {:.1} % | {:.1} % |",
                    shares[0],
                    shares[1],
                    shares[2],
                    p.priority.as_str(),
                    p.offered,
                    p.shed * 100.0,
                    p.served * 100.0,
                );
            }
        }
    }
}
