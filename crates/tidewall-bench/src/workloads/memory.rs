//! Memory per task: N tasks parked for ever, heap bytes (counting allocator) and resident
//! bytes per task. The process exits afterwards, so the tasks are never cleaned up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::ensure;

use super::Measurement;
use crate::alloc::{resident_bytes, start_counting, stop_counting};
use crate::runtimes::Rt;
use crate::stats::Summary;

pub(super) fn parked(rt: &Rt, n: u64) -> anyhow::Result<Measurement> {
    // A warm-up task, so the runtime's lazily built structures are not charged to the tasks.
    rt.run(async {});
    let started = Arc::new(AtomicU64::new(0));
    let rss_before = resident_bytes();
    start_counting();
    let spawner = rt.spawner();
    let counter = Arc::clone(&started);
    rt.run(async move {
        // In batches, each waited for until parked: spawning all N before any runs would grow
        // the run queues to N entries and charge their capacity to the tasks.
        const BATCH: u64 = 1024;
        let mut spawned = 0;
        while spawned < n {
            let batch = BATCH.min(n - spawned);
            for _ in 0..batch {
                let counter = Arc::clone(&counter);
                // Each task holds its counter and parks, detached.
                spawner.spawn_detached(async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                    std::future::pending::<()>().await;
                });
            }
            spawned += batch;
            while counter.load(Ordering::Relaxed) < spawned {
                futures_lite::future::yield_now().await;
            }
        }
    });
    let parked = started.load(Ordering::Relaxed);
    ensure!(
        parked == n,
        "parked-memory: {parked} of {n} tasks reached their park point"
    );
    let heap = stop_counting() as f64 / n as f64;
    let rss = match (rss_before, resident_bytes()) {
        (Some(before), Some(after)) => after.saturating_sub(before) as f64 / n as f64,
        _ => f64::NAN,
    };
    Ok(Measurement {
        unit: "heap B/task".to_owned(),
        summary: Summary::of(vec![heap]),
        extra: vec![("resident B/task".to_owned(), rss)],
        extra_rounds: Vec::new(),
    })
}
