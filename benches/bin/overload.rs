//! The overload simulation's full form: every strategy through 0.5x → 3x → 0.5x capacity,
//! as tables (see `tidewall_benches::overload` for the model).
//!
//! `cargo run --release -p tidewall-benches --bin overload [-- <seconds per phase> <seed>]`

// A report printer: its output is the point.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use tidewall_benches::overload::{Scenario, simulate, strategies};

fn main() {
    let mut args = std::env::args().skip(1);
    let each = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_u64);
    let seed = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_261_205_u64);
    let scenario = Scenario::steps(Duration::from_secs(each), seed);
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
    }
}
