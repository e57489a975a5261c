//! `tidewall`: a measured tour of every Tidewall pattern.

mod open_files;
mod overload;
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
    /// The adaptive-limit overload scenario over real HTTP on loopback: Poisson arrivals
    /// stepping 0.5x → 3x → 0.5x of a dependency's capacity, without a limit, with a fixed
    /// one and with two adaptive limiters (WindowedGradient, Gradient2); prints one table,
    /// a row per strategy and phase (docs/ADAPTIVE.md).
    Overload(overload::OverloadArgs),
}

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    let (needed, what) = match command {
        Command::Tour(_) => (tour::OPEN_FILES, "the tour"),
        Command::Overload(_) => (overload::open_files_needed(), "`tidewall overload`"),
    };
    if let Some(short) = open_files::raise().and_then(|l| open_files::shortfall(l, needed, what)) {
        tour::note(&short);
    }
    match command {
        Command::Tour(args) => tour::run(&args),
        Command::Overload(args) => overload::run(&args),
    }
}
