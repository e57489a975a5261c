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

/// Each of `n` round trips timed on its own, both tasks on the runtime: the distribution
/// (µs p50, p99, p99.9) next to the headline.
pub(super) fn ping_pong_distribution(rt: &Rt, n: u64) -> anyhow::Result<Vec<(String, f64)>> {
    let spawner = rt.spawner();
    let (samples, last) = rt.run(async move {
        let (ping, pong) = ping_pong_pair();
        let pong = spawner.spawn(pong.run());
        let (samples, value) = ping.run_sampled(n).await;
        let in_order = pong.await;
        (samples, in_order.then_some(value))
    });
    per_round_trip_us(std::time::Duration::ZERO, last, n)?;
    Ok(distribution_us(samples))
}

/// µs per round trip between a task on the runtime and a plain thread outside it (blocking
/// on each answer): every message crosses threads, so the runtime's wake-up of a parked
/// worker is in every round trip, as in the thread ping-pong anchor.
pub(super) fn ping_pong_remote(rt: &Rt, n: u64) -> anyhow::Result<f64> {
    let (ping, pong) = ping_pong_pair();
    let pong = rt.spawn(pong.run());
    let (elapsed, value) = futures_lite::future::block_on(ping.run(n));
    let in_order = futures_lite::future::block_on(pong);
    per_round_trip_us(elapsed, in_order.then_some(value), n)
}

/// Percentiles (µs) of samples in ns.
pub(crate) fn distribution_us(mut samples_ns: Vec<f64>) -> Vec<(String, f64)> {
    samples_ns.sort_by(f64::total_cmp);
    [("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999)]
        .into_iter()
        .map(|(name, q)| {
            (
                format!("µs {name} (each timed)"),
                super::timers::percentile(&samples_ns, q) / 1e3,
            )
        })
        .collect()
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
            match self.round_trip(value).await {
                Some(back) => value = back,
                None => break,
            }
        }
        (start.elapsed(), value)
    }

    /// Like [`run`](Self::run), timing every round trip on its own (ns, in order): two clock
    /// reads more per round trip, so only for the distribution, never the headline figure.
    pub(crate) async fn run_sampled(self, n: u64) -> (Vec<f64>, u64) {
        let mut samples = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        let mut value = 0;
        for _ in 0..n {
            let start = Instant::now();
            match self.round_trip(value).await {
                Some(back) => value = back,
                None => break,
            }
            samples.push(start.elapsed().as_nanos() as f64);
        }
        (samples, value)
    }

    /// Sends `value`, returns the answer plus one (`None` once the other end is gone).
    async fn round_trip(&self, value: u64) -> Option<u64> {
        self.to_pong.send(value).await.ok()?;
        self.from_pong.recv().await.ok().map(|back| back + 1)
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
