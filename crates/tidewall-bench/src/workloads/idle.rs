//! Idle footprint: a runtime with one task parked on a far timer, left alone for a while:
//! resident bytes, OS threads, CPU time and context switches (wake-ups) meanwhile.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::Measurement;
use crate::alloc::resident_bytes;
use crate::runtimes::Rt;
use crate::stats::Summary;

pub(super) fn footprint(rt: &Rt, idle: Duration) -> anyhow::Result<Measurement> {
    let spawner = rt.spawner();
    // One task asleep on a timer that will not fire during the measurement: the timer
    // machinery is up, as in any real service.
    let inner = spawner.clone();
    spawner.spawn_detached(async move { inner.sleep(Duration::from_secs(3600)).await });
    rt.run(async {}); // the runtime has started and run something
    std::thread::sleep(Duration::from_millis(50)); // settle
    let before = Sample::take()?;
    let start = Instant::now();
    std::thread::sleep(idle);
    let seconds = start.elapsed().as_secs_f64();
    let after = Sample::take()?;
    let switches = after
        .context_switches
        .saturating_sub(before.context_switches);
    Ok(Measurement {
        unit: "wake-ups/s".to_owned(),
        summary: Summary::of(vec![switches as f64 / seconds]),
        extra: vec![
            (
                "CPU ms/s".to_owned(),
                (after.cpu_ms - before.cpu_ms) / seconds,
            ),
            ("threads".to_owned(), after.threads as f64),
            ("resident KiB".to_owned(), after.resident_kib),
        ],
        extra_rounds: Vec::new(),
    })
}

struct Sample {
    context_switches: u64,
    cpu_ms: f64,
    threads: u64,
    resident_kib: f64,
}

impl Sample {
    /// From `/proc/self/task`: every thread's switches and CPU time, and the thread count.
    fn take() -> anyhow::Result<Self> {
        let mut context_switches = 0;
        let mut threads = 0;
        for task in runtime_threads()? {
            let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
            threads += 1;
            context_switches += status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches")
                        || l.starts_with("nonvoluntary_ctxt_switches")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
        // CPU time in nanoseconds: the first field of each thread's schedstat (the 10 ms
        // ticks of /proc/self/stat are too coarse for an idle runtime).
        let mut cpu_ns = 0u64;
        for task in runtime_threads()? {
            let schedstat = std::fs::read_to_string(task.join("schedstat")).unwrap_or_default();
            cpu_ns += schedstat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
        }
        let cpu_ms = cpu_ns as f64 / 1e6;
        Ok(Self {
            context_switches,
            cpu_ms,
            // The measuring (main) thread is not counted above, but it is a thread of the process.
            threads: threads + 1,
            resident_kib: resident_bytes().map_or(f64::NAN, |b| b as f64 / 1024.0),
        })
    }
}

/// `/proc/self/task/<tid>` of every thread but this (the measuring, main) one, whose own
/// sleeping and reading of these files is not the runtime's activity.
fn runtime_threads() -> anyhow::Result<Vec<std::path::PathBuf>> {
    let main = std::process::id().to_string();
    Ok(std::fs::read_dir("/proc/self/task")
        .context("reading /proc/self/task")?
        .filter_map(Result::ok)
        .filter(|task| task.file_name().to_str() != Some(main.as_str()))
        .map(|task| task.path())
        .collect())
}
