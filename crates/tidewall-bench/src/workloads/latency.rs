//! Scheduler latency: a task yielding, and two tasks ping-ponging.

use std::time::Instant;

use anyhow::ensure;

use crate::runtimes::Rt;

/// ns per yield: one task yields `n` times through the runtime's own yield.
pub(super) fn yields(rt: &Rt, n: u64) -> anyhow::Result<f64> {
    let spawner = rt.spawner();
    let (elapsed, yielded) = rt.run(async move {
        let start = Instant::now();
        let mut yielded = 0u64;
        for _ in 0..n {
            spawner.yield_now().await;
            yielded += 1;
        }
        (start.elapsed(), yielded)
    });
    ensure!(yielded == n, "yield: {yielded} of {n}");
    Ok(elapsed.as_nanos() as f64 / n as f64)
}

/// µs per round trip: two tasks pass a counter back and forth over two bounded(1) channels.
pub(super) fn ping_pong(rt: &Rt, n: u64) -> anyhow::Result<f64> {
    let spawner = rt.spawner();
    let (elapsed, last) = rt.run(async move {
        let (to_pong, from_ping) = async_channel::bounded::<u64>(1);
        let (to_ping, from_pong) = async_channel::bounded::<u64>(1);
        let pong = spawner.spawn(async move {
            let mut expected = 0;
            while let Ok(value) = from_ping.recv().await {
                if value != expected || to_ping.send(value + 1).await.is_err() {
                    return false;
                }
                expected += 2;
            }
            true
        });
        let start = Instant::now();
        let mut value = 0;
        for _ in 0..n {
            if to_pong.send(value).await.is_err() {
                break;
            }
            match from_pong.recv().await {
                Ok(back) => value = back + 1,
                Err(_) => break,
            }
        }
        let elapsed = start.elapsed();
        drop(to_pong);
        let in_order = pong.await;
        (elapsed, in_order.then_some(value))
    });
    ensure!(
        last == Some(2 * n),
        "ping-pong: ended at {last:?}, expected {}",
        2 * n
    );
    Ok(elapsed.as_secs_f64() * 1e6 / n as f64)
}
