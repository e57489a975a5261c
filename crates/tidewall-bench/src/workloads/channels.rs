//! Channel throughput: one producer or four, each runtime's native channel and async-channel
//! on every runtime (so the executor and the channel are not confounded).

use std::time::Instant;

use anyhow::ensure;

use crate::runtimes::{Rt, Spawner};

/// Which channel carries the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Channel {
    /// The runtime's own: tokio's `mpsc`; smol and async-std *are* async-channel underneath
    /// (`smol::channel`, `async_std::channel`).
    Native,
    /// async-channel, the same crate on every runtime.
    AsyncChannel,
}

pub(crate) const CAPACITY: usize = 1024;

/// ns per message: `producers` tasks send `n` messages in all through a bounded channel to
/// one consumer (the root), which checks it received every one.
pub(super) fn throughput(rt: &Rt, channel: Channel, producers: u64, n: u64) -> anyhow::Result<f64> {
    let spawner = rt.spawner();
    let tokio = matches!(spawner, Spawner::Tokio(_));
    let per_producer = (n / producers.max(1)).max(1);
    let (elapsed, received, sum) = rt.run(async move {
        let start = Instant::now();
        let (received, sum) = if channel == Channel::Native && tokio {
            tokio_mpsc(&spawner, producers, per_producer).await
        } else {
            async_channel(&spawner, producers, per_producer).await
        };
        (start.elapsed(), received, sum)
    });
    per_message_ns(elapsed, producers, per_producer, received, sum)
}

/// ns per message, once the run is checked: every message received, the sum right.
pub(crate) fn per_message_ns(
    elapsed: std::time::Duration,
    producers: u64,
    per_producer: u64,
    received: u64,
    sum: u64,
) -> anyhow::Result<f64> {
    let total = per_producer * producers;
    ensure!(received == total, "channel: {received} of {total} received");
    ensure!(
        sum == producers * per_producer * (per_producer - 1) / 2,
        "channel: the sum is off"
    );
    Ok(elapsed.as_nanos() as f64 / total as f64)
}

async fn tokio_mpsc(spawner: &Spawner, producers: u64, per_producer: u64) -> (u64, u64) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(CAPACITY);
    for _ in 0..producers {
        let tx = tx.clone();
        spawner.spawn_detached(async move {
            for i in 0..per_producer {
                if tx.send(i).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let (mut received, mut sum) = (0, 0);
    while let Some(value) = rx.recv().await {
        received += 1;
        sum += value;
    }
    (received, sum)
}

async fn async_channel(spawner: &Spawner, producers: u64, per_producer: u64) -> (u64, u64) {
    let (tx, rx) = async_channel::bounded::<u64>(CAPACITY);
    for _ in 0..producers {
        spawner.spawn_detached(produce(tx.clone(), per_producer));
    }
    drop(tx);
    consume(rx).await
}

/// Sends `0..count` (stops early if the consumer is gone).
pub(crate) async fn produce(tx: async_channel::Sender<u64>, count: u64) {
    for i in 0..count {
        if tx.send(i).await.is_err() {
            return;
        }
    }
}

/// Receives until every sender is gone: how many messages, and their sum.
pub(crate) async fn consume(rx: async_channel::Receiver<u64>) -> (u64, u64) {
    let (mut received, mut sum) = (0, 0);
    while let Ok(value) = rx.recv().await {
        received += 1;
        sum += value;
    }
    (received, sum)
}
