//! embassy on the host: its single-threaded executor (`platform-std`) on a thread of its own,
//! running the CPU workloads it can: yield, ping-pong, SPSC channels (embassy-sync's and
//! async-channel) and single timers (embassy-time's std driver).
//!
//! embassy's tasks are `#[task]` functions with static pools, not arbitrary futures, so the
//! executor runs one driver task that takes jobs from a queue and runs each with the same
//! futures the other runtimes run (the ping-pong ends, the channel producer and consumer).

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use embassy_executor::{Executor, Spawner};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::channel::Channel as EmbassyChannel;

use super::Measurement;
use super::channels::{self, CAPACITY};
use super::latency::{self, Pong};
use super::timers;

/// How long a job may take before the host gives up on it (the parent's own limit is the
/// backstop for a hung executor thread).
const JOB_LIMIT: Duration = Duration::from_secs(300);

/// The executor thread, fed jobs through a queue.
pub(crate) struct Host {
    jobs: async_channel::Sender<Job>,
}

type Reply<T> = mpsc::SyncSender<Result<T, String>>;

enum Job {
    Yield {
        n: u64,
        reply: Reply<Duration>,
    },
    PingPong {
        n: u64,
        /// Time each round trip on its own (the distribution) instead of all of them.
        sampled: bool,
        reply: Reply<(Duration, Vec<f64>, u64)>,
    },
    Channel {
        native: bool,
        n: u64,
        reply: Reply<(Duration, u64, u64)>,
    },
    Sleeps {
        duration: Duration,
        count: u64,
        reply: Reply<Vec<f64>>,
    },
}

impl Host {
    /// Starts the executor on its own thread. It never returns (embassy's `run` is `-> !`);
    /// the thread parks while the queue is empty and ends with the process.
    pub(crate) fn start() -> anyhow::Result<Self> {
        let (jobs, queue) = async_channel::unbounded::<Job>();
        let (started, ready) = mpsc::sync_channel::<Result<(), String>>(1);
        std::thread::Builder::new()
            .name("embassy".to_owned())
            .spawn(move || {
                let executor: &'static mut Executor = Box::leak(Box::new(Executor::new()));
                executor.run(move |spawner| {
                    let spawned = driver(spawner, queue).map(|token| spawner.spawn(token));
                    let _ = started.send(spawned.map_err(|e| e.to_string()));
                })
            })?;
        ready
            .recv_timeout(Duration::from_secs(10))
            .context("the embassy executor did not start")?
            .map_err(|e| anyhow::anyhow!("spawning embassy's driver task: {e}"))?;
        Ok(Self { jobs })
    }

    fn submit<T>(&self, job: impl FnOnce(Reply<T>) -> Job) -> anyhow::Result<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.jobs
            .send_blocking(job(reply))
            .map_err(|_| anyhow::anyhow!("the embassy executor is gone"))?;
        answer
            .recv_timeout(JOB_LIMIT)
            .context("no answer from the embassy executor")?
            .map_err(|e| anyhow::anyhow!(e))
    }

    /// ns per yield.
    pub(crate) fn yields(&self, n: u64) -> anyhow::Result<f64> {
        let elapsed = self.submit(|reply| Job::Yield { n, reply })?;
        Ok(elapsed.as_nanos() as f64 / n as f64)
    }

    /// µs per round trip between the driver and a second task.
    pub(crate) fn ping_pong(&self, n: u64) -> anyhow::Result<f64> {
        let (elapsed, _, last) = self.submit(|reply| Job::PingPong {
            n,
            sampled: false,
            reply,
        })?;
        latency::per_round_trip_us(elapsed, Some(last), n)
    }

    /// Each round trip timed on its own: µs p50, p99, p99.9.
    pub(crate) fn ping_pong_distribution(&self, n: u64) -> anyhow::Result<Vec<(String, f64)>> {
        let (_, samples, last) = self.submit(|reply| Job::PingPong {
            n,
            sampled: true,
            reply,
        })?;
        latency::per_round_trip_us(Duration::ZERO, Some(last), n)?;
        Ok(latency::distribution_us(samples))
    }

    /// ns per message from a producer task to the driver: embassy-sync's channel (`native`)
    /// or async-channel, both of capacity [`CAPACITY`].
    pub(crate) fn channel(&self, native: bool, n: u64) -> anyhow::Result<f64> {
        let (elapsed, received, sum) = self.submit(|reply| Job::Channel { native, n, reply })?;
        channels::per_message_ns(elapsed, 1, n, received, sum)
    }

    /// Lateness of `count` sequential embassy-time sleeps of `duration`.
    pub(crate) fn sleeps(&self, duration: Duration, count: u64) -> anyhow::Result<Measurement> {
        let late = self.submit(|reply| Job::Sleeps {
            duration,
            count,
            reply,
        })?;
        // embassy-time counts whole µs (1 MHz ticks): it may wake up to one tick before a
        // deadline taken from std's finer clock.
        timers::summarize(late, count, 1.0)
    }
}

/// embassy-sync's channel for the native SPSC workload (statics: embassy's way).
static NATIVE: EmbassyChannel<CriticalSectionRawMutex, u64, CAPACITY> = EmbassyChannel::new();

#[embassy_executor::task]
async fn driver(spawner: Spawner, queue: async_channel::Receiver<Job>) {
    while let Ok(job) = queue.recv().await {
        match job {
            Job::Yield { n, reply } => {
                let start = Instant::now();
                for _ in 0..n {
                    futures_lite::future::yield_now().await;
                }
                let _ = reply.send(Ok(start.elapsed()));
            }
            Job::PingPong { n, sampled, reply } => {
                let (ping, pong) = latency::ping_pong_pair();
                let (done, finished) = async_channel::bounded(1);
                let result = match pong_task(pong, done) {
                    Ok(token) => {
                        spawner.spawn(token);
                        let (elapsed, samples, last) = if sampled {
                            let (samples, last) = ping.run_sampled(n).await;
                            (Duration::ZERO, samples, last)
                        } else {
                            let (elapsed, last) = ping.run(n).await;
                            (elapsed, Vec::new(), last)
                        };
                        match finished.recv().await {
                            Ok(true) => Ok((elapsed, samples, last)),
                            _ => Err("ping-pong: the pong task saw a counter out of order".into()),
                        }
                    }
                    Err(e) => Err(format!("spawning the pong task: {e}")),
                };
                let _ = reply.send(result);
            }
            Job::Channel { native, n, reply } => {
                let start = Instant::now();
                let result = if native {
                    match native_producer(n) {
                        Ok(token) => {
                            spawner.spawn(token);
                            let (mut received, mut sum) = (0, 0);
                            while received < n {
                                sum += NATIVE.receive().await;
                                received += 1;
                            }
                            Ok((start.elapsed(), received, sum))
                        }
                        Err(e) => Err(format!("spawning the producer: {e}")),
                    }
                } else {
                    let (tx, rx) = async_channel::bounded(CAPACITY);
                    match async_channel_producer(tx, n) {
                        Ok(token) => {
                            spawner.spawn(token);
                            let (received, sum) = channels::consume(rx).await;
                            Ok((start.elapsed(), received, sum))
                        }
                        Err(e) => Err(format!("spawning the producer: {e}")),
                    }
                };
                let _ = reply.send(result);
            }
            Job::Sleeps {
                duration,
                count,
                reply,
            } => {
                let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
                let sleep = embassy_time::Duration::from_micros(micros);
                // Its untimed first sleep starts embassy-time's std driver (a thread).
                let late = timers::one_after_another(duration, count, || {
                    embassy_time::Timer::after(sleep)
                })
                .await;
                let _ = reply.send(Ok(late));
            }
        }
    }
}

#[embassy_executor::task]
async fn pong_task(pong: Pong, done: async_channel::Sender<bool>) {
    let in_order = pong.run().await;
    let _ = done.send(in_order).await;
}

#[embassy_executor::task]
async fn native_producer(n: u64) {
    for i in 0..n {
        NATIVE.send(i).await;
    }
}

#[embassy_executor::task]
async fn async_channel_producer(tx: async_channel::Sender<u64>, n: u64) {
    channels::produce(tx, n).await;
}
