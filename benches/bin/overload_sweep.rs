//! The settings sweeps docs/ADAPTIVE.md quotes: what tuning does for Netflix's Gradient2 and
//! Vegas in the simulation (10 s phases), and for the windowed gradient at the loopback run's
//! small dependency (8 at once, 80 ms; 40 s phases). Each row is the 3x phase of one run.
//!
//! `cargo run --release -p tidewall-benches --bin overload-sweep [-- <seed>]`

// A report printer: its output is the point.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use tidewall_benches::overload::{PhaseSummary, Scenario, Tidewall, simulate};
use tidewall_core::adaptive::{Gradient2, LimitAlgorithm, Vegas, WindowedGradient};

fn main() {
    let seed = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_261_205_u64);
    let scenario = Scenario::steps(Duration::from_secs(10), seed);
    header(&scenario, "Gradient2 (bounds 1..=1,000)");
    for tolerance in [1.0, 1.1, 1.2] {
        for queue in 1..=4 {
            let algorithm = Gradient2::builder()
                .min_limit(1)
                .max_limit(1000)
                .rtt_tolerance(tolerance)
                .queue_size(queue)
                .build()
                .expect("valid");
            row(
                &scenario,
                &format!("rtt_tolerance {tolerance}, queue_size {queue}"),
                Box::new(algorithm),
            );
        }
    }
    header(&scenario, "Vegas");
    for alpha in 2..=4 {
        for beta in [4, 6, 8, 10, 12] {
            if beta <= alpha {
                continue;
            }
            let algorithm = Vegas::builder()
                .alpha(alpha)
                .beta(beta)
                .build()
                .expect("valid");
            row(
                &scenario,
                &format!("alpha {alpha}, beta {beta}"),
                Box::new(algorithm),
            );
        }
    }
    let small = Scenario::steps(Duration::from_secs(40), seed).with_dependency(
        8,
        Duration::from_millis(80),
        Duration::from_secs(2),
    );
    header(&small, "the windowed gradient at C = 8");
    let windowed = || WindowedGradient::builder();
    for (name, builder) in [
        ("defaults", windowed()),
        ("buffer 0.1", windowed().buffer(0.1)),
        ("buffer 0.1, window 20", windowed().buffer(0.1).window(20)),
    ] {
        row(&small, name, Box::new(builder.build().expect("valid")));
    }
}

fn header(scenario: &Scenario, what: &str) {
    println!();
    println!(
        "{what}: the 3x phase; dependency {} at once, {:?} each; {:?} per phase; seed {}",
        scenario.capacity, scenario.service, scenario.phases[1].1, scenario.seed
    );
    println!();
    println!("| settings | goodput (of capacity) | p50 | p99 | p99 in service times |");
    println!("|---|---|---|---|---|");
}

fn row(scenario: &Scenario, settings: &str, algorithm: Box<dyn LimitAlgorithm>) {
    let run = simulate(scenario, &mut Tidewall(algorithm));
    let phases: Vec<PhaseSummary> = run.phases();
    let peak = &phases[1];
    let service_ms = scenario.service.as_secs_f64() * 1000.0;
    println!(
        "| {settings} | {:.1} % | {:.1} ms | {:.1} ms | {:.1} L |",
        peak.goodput * 100.0,
        peak.p50_ms,
        peak.p99_ms,
        peak.p99_ms / service_ms,
    );
}
