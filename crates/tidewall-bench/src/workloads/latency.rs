//! Scheduler latency: a task yielding, and two tasks ping-ponging.

use std::time::Instant;

use anyhow::ensure;

use crate::runtimes::Rt;

/// ns per yield: one task yields `n` times the same way on every runtime (wake itself, return
/// `Pending`: `futures_lite::future::yield_now`). tokio's own `yield_now` does more (it defers
/// the wake until its I/O and timer drivers have been polled), so it is not used here.
/// (Nothing to check beyond completion: the loop is its own count.)
pub(super) fn yields(rt: &Rt, n: u64) -> anyhow::Result<f64> {
    let elapsed = rt.run(async move {
        let start = Instant::now();
        for _ in 0..n {
            futures_lite::future::yield_now().await;
        }
        start.elapsed()
    });
    Ok(elapsed.as_nanos() as f64 / n as f64)
}

/// µs per round trip: two tasks pass a counter back and forth over two bounded(1) channels.
/// Where the two tasks run is the scheduler's choice: on tokio-mt they typically share a
/// worker (its LIFO slot), so this is a same-thread hand-off, not a cross-thread wake-up.
pub(super) fn ping_pong(rt: &Rt, n: u64) -> anyhow::Result<f64> {
    let spawner = rt.spawner();
    let (elapsed, last) = rt.run(async move {
        let (ping, pong) = ping_pong_pair();
        let pong = spawner.spawn(pong.run());
        let (elapsed, value) = ping.run(n).await;
        let in_order = pong.await;
        (elapsed, in_order.then_some(value))
    });
    per_round_trip_us(elapsed, last, n)
}

/// The two ends of a ping-pong, each a future any executor can run.
pub(crate) fn ping_pong_pair() -> (Ping, Pong) {
    let (to_pong, from_ping) = async_channel::bounded::<u64>(1);
    let (to_ping, from_pong) = async_channel::bounded::<u64>(1);
    (Ping { to_pong, from_pong }, Pong { from_ping, to_ping })
}

/// The timing end: sends a counter, waits for it back one higher, `n` times.
pub(crate) struct Ping {
    to_pong: async_channel::Sender<u64>,
    from_pong: async_channel::Receiver<u64>,
}

impl Ping {
    /// The time the `n` round trips took and the counter's last value (`2n` when none was
    /// lost); hangs up on the other end when done.
    pub(crate) async fn run(self, n: u64) -> (std::time::Duration, u64) {
        let start = Instant::now();
        let mut value = 0;
        for _ in 0..n {
            if self.to_pong.send(value).await.is_err() {
                break;
            }
            match self.from_pong.recv().await {
                Ok(back) => value = back + 1,
                Err(_) => break,
            }
        }
        (start.elapsed(), value)
    }
}

/// The answering end: returns each counter one higher until hung up on; `true` when every
/// counter came in order.
pub(crate) struct Pong {
    from_ping: async_channel::Receiver<u64>,
    to_ping: async_channel::Sender<u64>,
}

impl Pong {
    pub(crate) async fn run(self) -> bool {
        let mut expected = 0;
        while let Ok(value) = self.from_ping.recv().await {
            if value != expected || self.to_ping.send(value + 1).await.is_err() {
                return false;
            }
            expected += 2;
        }
        true
    }
}

/// µs per round trip, once the run is checked: `last` must be `2n`.
pub(crate) fn per_round_trip_us(
    elapsed: std::time::Duration,
    last: Option<u64>,
    n: u64,
) -> anyhow::Result<f64> {
    ensure!(
        last == Some(2 * n),
        "ping-pong: ended at {last:?}, expected {}",
        2 * n
    );
    Ok(elapsed.as_secs_f64() * 1e6 / n as f64)
}
