//! Spawn + join, from inside and from outside the runtime, and fan-out/fan-in.

use std::time::Instant;

use anyhow::ensure;

use crate::runtimes::Rt;

/// 0 + 1 + … + (n − 1).
fn triangle(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// ns per task: the root spawns `n` tasks on its own runtime, then joins them in order.
pub(super) fn local(rt: &Rt, n: u64) -> anyhow::Result<f64> {
    let spawner = rt.spawner();
    let (elapsed, sum) = rt.run(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..n).map(|i| spawner.spawn(async move { i })).collect();
        let mut sum = 0;
        for task in tasks {
            sum += task.await;
        }
        (start.elapsed(), sum)
    });
    ensure!(sum == triangle(n), "spawn-local: {sum} != {}", triangle(n));
    Ok(elapsed.as_nanos() as f64 / n as f64)
}

/// ns per task: this (outside) thread spawns `n` tasks, then waits for them all.
pub(super) fn remote(rt: &Rt, n: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..n).map(|i| rt.spawn(async move { i })).collect();
    let sum = futures_lite::future::block_on(async {
        let mut sum = 0;
        for task in tasks {
            sum += task.await;
        }
        sum
    });
    let elapsed = start.elapsed();
    ensure!(sum == triangle(n), "spawn-remote: {sum} != {}", triangle(n));
    Ok(elapsed.as_nanos() as f64 / n as f64)
}

/// ns per child: `n` children each send a value into one channel; the root receives them all.
pub(super) fn fan_out(rt: &Rt, n: u64) -> anyhow::Result<f64> {
    let spawner = rt.spawner();
    let (elapsed, received, sum) = rt.run(async move {
        let start = Instant::now();
        let (tx, rx) = async_channel::unbounded();
        for i in 0..n {
            let tx = tx.clone();
            spawner.spawn_detached(async move {
                // A send on an unbounded channel only fails if the receiver is gone.
                let _ = tx.send(i).await;
            });
        }
        drop(tx);
        let (mut received, mut sum) = (0u64, 0u64);
        while let Ok(value) = rx.recv().await {
            received += 1;
            sum += value;
        }
        (start.elapsed(), received, sum)
    });
    ensure!(received == n, "fan-out: {received} of {n} received");
    ensure!(sum == triangle(n), "fan-out: {sum} != {}", triangle(n));
    Ok(elapsed.as_nanos() as f64 / n as f64)
}
