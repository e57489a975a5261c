//! `tidewall`: a measured tour of every Tidewall pattern.

mod tour;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tidewall",
    version,
    about = "Async runtime patterns for Rust, measured"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the tour's scenarios against an embedded HTTP service on loopback and print what was
    /// measured (the README lists them).
    Tour(tour::TourArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Tour(args) => tour::run(&args),
    }
}
