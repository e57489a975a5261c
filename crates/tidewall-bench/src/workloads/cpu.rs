//! CPU-bound tasks: does the scheduler put every worker thread to work? (The seed says a
//! work-stealing scheduler is "better for CPU-intensive tasks".) All the tasks are spawned
//! by one task, so they start on one worker; only a scheduler that shares or steals work
//! runs them on the others.

use std::hint::black_box;
use std::time::Instant;

use anyhow::ensure;

use crate::runtimes::Rt;

/// Rounds of arithmetic per task: tens of µs, long enough that scheduling is not the cost.
const ROUNDS: u64 = 20_000;

/// One task's work: a mixing loop the optimizer cannot shortcut.
fn work(seed: u64) -> u64 {
    let mut x = seed;
    for _ in 0..black_box(ROUNDS) {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x ^= x >> 33;
    }
    x
}

/// ns for one task's work alone on this thread (median of 21): the unit of the speed-up.
pub(super) fn one_task_ns() -> f64 {
    let mut samples: Vec<f64> = (0..21)
        .map(|i| {
            let start = Instant::now();
            black_box(work(i));
            start.elapsed().as_nanos() as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// ns per task: the time from the first spawn to the last join of `n` tasks, over `n`.
pub(super) fn makespan(rt: &Rt, n: u64) -> anyhow::Result<f64> {
    let spawner = rt.spawner();
    let (elapsed, sum) = rt.run(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| spawner.spawn(async move { work(i) }))
            .collect();
        let mut sum = 0u64;
        for task in tasks {
            sum = sum.wrapping_add(task.await);
        }
        (start.elapsed(), sum)
    });
    let expected = (0..n).map(work).fold(0u64, u64::wrapping_add);
    ensure!(
        sum == expected,
        "cpu-bound: a task's result is missing or wrong"
    );
    Ok(elapsed.as_nanos() as f64 / n as f64)
}
