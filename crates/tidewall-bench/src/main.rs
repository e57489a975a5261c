//! `tidewall-bench`: measures async runtimes side by side on the same workloads, each
//! workload on each runtime in a fresh process, with the machine's physical floor (the W0
//! anchor probe) measured first so every figure can be read against it.
//!
//! ```text
//! tidewall-bench [--quick] [--runtimes tokio-mt,tokio-ct,smol,async-std,monoio,embassy]
//!                [--workloads ...] [--threads 2] [--rounds N]
//!                [--json FILE] [--report DIR] [--from-json FILE]
//! ```
//!
//! The parent process runs `tidewall-bench child ...` once per (runtime, workload) and reads
//! its JSON result from stdout, so one runtime's threads, allocations and resident memory
//! never skew another's.

mod alloc;
mod anchor;
mod child;
#[cfg(test)]
mod fixture;
mod loadgen;
mod machine;
mod plan;
mod report;
mod runtimes;
mod stats;
mod table;
mod workloads;

use std::io::Write as _;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// A counting allocator: the memory workloads read live heap bytes from it.
#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Async runtimes measured side by side, each in a fresh process"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: plan::RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs one workload on one runtime and prints its result as JSON (used by the parent).
    #[command(hide = true)]
    Child(child::ChildArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Child(args)) => {
            let result = child::run(&args)?;
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &result)?;
            writeln!(out)?;
            Ok(())
        }
        None => {
            let results = plan::run(&cli.run).context("running the suite")?;
            let mut out = std::io::stdout().lock();
            out.write_all(table::render(&results).as_bytes())?;
            if let Some(dir) = &cli.run.report {
                report::write(&results, dir)?;
                writeln!(out, "report: {}", dir.join("report.md").display())?;
            }
            if let Some(path) = &cli.run.json {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                serde_json::to_writer_pretty(file, &results)?;
                writeln!(out, "raw data: {}", path.display())?;
            }
            if results.failures() > 0 {
                anyhow::bail!("{} workload(s) failed their own checks", results.failures());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tidewall-bench").chain(args.iter().copied()))
    }

    /// Zero rounds or threads would run something other than what was asked: refused, with
    /// the reason, by the suite and by its children alike.
    #[test]
    fn zero_rounds_or_threads_are_refused() {
        for args in [
            &["--rounds", "0"][..],
            &["--threads", "0"],
            &[
                "child",
                "--runtime",
                "smol",
                "--workload",
                "yield",
                "--threads",
                "0",
                "--n",
                "1",
            ],
        ] {
            let error = parse(args).expect_err("refused");
            assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
            assert!(error.to_string().contains("must be at least 1"), "{error}");
        }
        assert!(parse(&["--rounds", "-1"]).is_err());
        let one = parse(&["--rounds", "1", "--threads", "1"]).unwrap();
        assert_eq!((one.run.rounds, one.run.threads), (Some(1), 1));
        let default = parse(&[]).unwrap();
        assert_eq!((default.run.rounds, default.run.threads), (None, 2));
        let child = parse(&[
            "child",
            "--runtime",
            "smol",
            "--workload",
            "yield",
            "--threads",
            "3",
            "--n",
            "1",
        ])
        .unwrap();
        assert!(matches!(child.command, Some(Command::Child(args)) if args.threads == 3));
    }
}
