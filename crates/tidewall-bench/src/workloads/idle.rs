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
    // This (the measuring) thread's own sleep is one switch; not the runtime's.
    let switches = after
        .context_switches
        .saturating_sub(before.context_switches + 1);
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
    })
}

struct Sample {
    context_switches: u64,
    cpu_ms: f64,
    threads: u64,
    resident_kib: f64,
}

impl Sample {
    /// From `/proc/self`: every thread's switches, the process's CPU time, its thread count.
    fn take() -> anyhow::Result<Self> {
        let mut context_switches = 0;
        let mut threads = 0;
        for task in std::fs::read_dir("/proc/self/task").context("reading /proc/self/task")? {
            let status = std::fs::read_to_string(task?.path().join("status")).unwrap_or_default();
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
        let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
        // Fields after the command name (which may contain spaces) end with ')'.
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of /proc/<pid>/stat, i.e. 11 and 12 here.
        let ticks_per_second = 100.0; // USER_HZ, fixed at 100 on Linux
        let cpu_ms = (ticks(11) + ticks(12)) * 1000.0 / ticks_per_second;
        Ok(Self {
            context_switches,
            cpu_ms,
            threads,
            resident_kib: resident_bytes().map_or(f64::NAN, |b| b as f64 / 1024.0),
        })
    }
}
