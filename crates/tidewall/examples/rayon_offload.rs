//! CPU-bound work offloaded from async code to rayon, stoppable through a cancel flag.
//!
//! ```text
//! cargo run -p tidewall --example rayon_offload --release
//! ```
//!
//! The async side never blocks: the work runs on a blocking thread that drives rayon's pool,
//! and checks the [`CancelFlag`] between chunks. When the caller gives up (here: a timeout),
//! the flag is raised and the remaining chunks are skipped instead of burning every core.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use tidewall::FutureExt as _;
use tidewall::rt::Tokio;
use tidewall::task::{CancelFlag, spawn_blocking_cancellable};

/// Counts primes below `limit` in chunks of 10,000 on rayon, stopping early when cancelled.
fn count_primes(limit: u64, flag: &CancelFlag, chunks_done: &AtomicUsize) -> Option<usize> {
    let chunks: Vec<u64> = (0..limit.div_ceil(10_000)).collect();
    chunks
        .par_iter()
        .map(|&chunk| {
            if flag.is_cancelled() {
                return None;
            }
            let range = chunk * 10_000..((chunk + 1) * 10_000).min(limit);
            let count = range.filter(|&n| is_prime(n)).count();
            chunks_done.fetch_add(1, Ordering::Relaxed);
            Some(count)
        })
        .sum()
}

fn is_prime(n: u64) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let done = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&done);
    let started = Instant::now();
    let primes =
        spawn_blocking_cancellable(&Tokio, move |flag| count_primes(2_000_000, &flag, &counter))
            .await?;
    println!(
        "primes below 2,000,000: {primes:?} in {:?} ({} chunks)",
        started.elapsed(),
        done.load(Ordering::Relaxed)
    );
    if primes != Some(148_933) {
        return Err("wrong prime count".into());
    }

    // The same kind of work, far bigger, abandoned after 200 ms: the flag stops it.
    let done = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&done);
    let started = Instant::now();
    let task = spawn_blocking_cancellable(&Tokio, move |flag| {
        count_primes(2_000_000_000, &flag, &counter)
    });
    let outcome = task.timeout(Duration::from_millis(200)).await;
    println!(
        "abandoned after {:?}: {}",
        started.elapsed(),
        if outcome.is_err() {
            "timed out"
        } else {
            "finished?"
        }
    );
    // Chunks already running finish; no new chunk starts once the flag is up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_cancel = done.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!(
        "chunks done: {after_cancel} of 200,000; still {} after another 300 ms",
        done.load(Ordering::Relaxed)
    );
    if done.load(Ordering::Relaxed) != after_cancel || after_cancel >= 200_000 {
        return Err("the work did not stop".into());
    }
    println!("the cancelled work stopped");
    Ok(())
}
