//! Memory per task: N tasks parked for ever, heap bytes (counting allocator) and resident
//! bytes per task. The process exits afterwards, so the tasks are never cleaned up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::ensure;

use super::Measurement;
use crate::alloc::{live_bytes, resident_bytes};
use crate::runtimes::Rt;
use crate::stats::Summary;

pub(super) fn parked(rt: &Rt, n: u64) -> anyhow::Result<Measurement> {
    // A warm-up task, so the runtime's lazily built structures are not charged to the tasks.
    rt.run(async {});
    let started = Arc::new(AtomicU64::new(0));
    let (heap_before, rss_before) = (live_bytes(), resident_bytes());
    let spawner = rt.spawner();
    let counter = Arc::clone(&started);
    rt.run(async move {
        for _ in 0..n {
            let counter = Arc::clone(&counter);
            // Each task holds its counter and parks, detached.
            spawner.spawn_detached(async move {
                counter.fetch_add(1, Ordering::Relaxed);
                std::future::pending::<()>().await;
            });
        }
    });
    // Wait until every task has run to its park point (bounded: 60 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    while started.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let parked = started.load(Ordering::Relaxed);
    ensure!(
        parked == n,
        "parked-memory: {parked} of {n} tasks reached their park point"
    );
    let heap = live_bytes().saturating_sub(heap_before) as f64 / n as f64;
    let rss = match (rss_before, resident_bytes()) {
        (Some(before), Some(after)) => after.saturating_sub(before) as f64 / n as f64,
        _ => f64::NAN,
    };
    Ok(Measurement {
        unit: "heap B/task".to_owned(),
        summary: Summary::of(vec![heap]),
        extra: vec![("resident B/task".to_owned(), rss)],
    })
}
