//! Open loop: requests go out on a fixed schedule whatever the replies do (latency).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Poll};

use super::{STALL, connect, decode, drain, encode, histogram, send, wait};

/// The sender sleeps until this long before a request is due, then spins: a sleep alone
/// wakes tens of µs late (timer slack, the scheduler), which would be in every sample.
const SPIN: Duration = Duration::from_micros(30);

/// What an open-loop run measured (ns).
#[derive(Debug)]
pub(crate) struct OpenLoop {
    /// From each request's *intended* send time to its reply: coordinated omission corrected
    /// (a server that stalls delays every request that fell due meanwhile, and each counts).
    pub(crate) corrected: Histogram<u64>,
    /// From each request's actual send time to its reply: the same minus the generator's own
    /// lateness (the sender never waits on replies, so a stall is still in it).
    pub(crate) from_send: Histogram<u64>,
    /// How late the generator itself sent, against the schedule.
    pub(crate) send_lateness: Histogram<u64>,
}

/// `rate` requests a second (at most 1M) for `duration`, round-robin over `connections`, sent
/// on schedule by a sender thread while this thread reads the replies. Every request must
/// come back, in order per connection.
pub(crate) fn open_loop(
    addr: SocketAddr,
    connections: usize,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<OpenLoop> {
    open_loop_within(addr, connections, rate, duration, STALL)
}

/// The schedule: request `sequence` is due `sequence / rate` seconds after the start.
struct Schedule {
    rate: u64,
}

impl Schedule {
    fn due_ns(&self, sequence: u64) -> u64 {
        let due = u128::from(sequence) * 1_000_000_000 / u128::from(self.rate);
        u64::try_from(due).unwrap_or(u64::MAX)
    }
}

pub(super) fn open_loop_within(
    addr: SocketAddr,
    connections: usize,
    rate: u64,
    duration: Duration,
    stall: Duration,
) -> anyhow::Result<OpenLoop> {
    ensure!(connections > 0, "no connections");
    ensure!(
        (1..=1_000_000).contains(&rate),
        "a rate of {rate}/s is outside 1..=1M/s (one sender thread)"
    );
    let mut poll = Poll::new()?;
    let mut streams = connect(addr, connections, &mut poll)?;
    let total = u64::try_from(duration.as_nanos() * u128::from(rate) / 1_000_000_000)?.max(1);
    let (mut sender, start) = Sender::start(&streams, Schedule { rate }, total, stall)?;
    let (mut corrected, mut from_send) = (histogram()?, histogram()?);
    let schedule = Schedule { rate };
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); connections];
    let mut next: Vec<u64> = (0..connections as u64).collect();
    let mut events = Events::with_capacity(1024);
    let (mut received, mut last_reply) = (0u64, Instant::now());
    let mut lateness = None;
    while received < total {
        // Short waits, so a sender that failed is noticed (its error is the one reported).
        wait(&mut poll, &mut events, Duration::from_millis(50))?;
        if events.is_empty() {
            if lateness.is_none() && sender.has_ended() {
                lateness = Some(sender.finish()?);
            }
            ensure!(
                last_reply.elapsed() < stall,
                "no reply for {stall:?}: {received} of {total} came back"
            );
            continue;
        }
        for event in &events {
            let i = event.token().0;
            drain(&mut streams[i], &mut pending[i], |reply| {
                let now = ns_since(start);
                let (sequence, sent) = decode(reply);
                ensure!(
                    sequence == next[i],
                    "connection {i}: reply {sequence}, expected {}",
                    next[i]
                );
                next[i] += connections as u64;
                corrected.saturating_record(now.saturating_sub(schedule.due_ns(sequence)).max(1));
                from_send.saturating_record(now.saturating_sub(sent).max(1));
                received += 1;
                Ok(())
            })?;
        }
        last_reply = Instant::now();
    }
    Ok(OpenLoop {
        corrected,
        from_send,
        send_lateness: match lateness {
            Some(lateness) => lateness,
            None => sender.finish()?,
        },
    })
}

fn ns_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The sender thread. Dropped (the reader failed), it is told to stop and joined, so it
/// never outlives the run writing to connections nobody reads.
struct Sender {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<Histogram<u64>>>>,
}

impl Sender {
    /// Starts the sender and, once its thread is ready, the schedule's clock (returned): the
    /// thread's own start-up is never counted as lateness.
    fn start(
        streams: &[TcpStream],
        schedule: Schedule,
        total: u64,
        stall: Duration,
    ) -> anyhow::Result<(Self, Instant)> {
        // It writes through duplicates of the reader's sockets.
        let mut senders = streams
            .iter()
            .map(|s| {
                let fd = std::os::fd::AsFd::as_fd(s).try_clone_to_owned()?;
                Ok(TcpStream::from_std(std::net::TcpStream::from(fd)))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let (ready, is_ready) = mpsc::sync_channel::<()>(1);
        let (go, started) = mpsc::sync_channel::<Instant>(1);
        let thread = std::thread::Builder::new()
            .name("loadgen-send".to_owned())
            .spawn(move || -> anyhow::Result<Histogram<u64>> {
                precise_sleeps();
                let mut lateness = histogram()?;
                ready.send(())?;
                let start = started.recv()?;
                let count = senders.len() as u64;
                for sequence in 0..total {
                    if stopped.load(Ordering::Relaxed) {
                        anyhow::bail!("stopped");
                    }
                    let due = schedule.due_ns(sequence);
                    wait_until(start, due);
                    let sent = ns_since(start);
                    lateness.saturating_record(sent.saturating_sub(due).max(1));
                    let i = usize::try_from(sequence % count)?;
                    send(
                        &mut senders[i],
                        &encode(sequence, sent),
                        Instant::now() + stall,
                        Some(&stopped),
                    )?;
                }
                Ok(lateness)
            })?;
        let mut sender = Self {
            stop,
            thread: Some(thread),
        };
        if is_ready.recv().is_err() {
            // The thread ended before it was ready: its error says why.
            sender.finish()?;
            anyhow::bail!("the sender thread ended before it started");
        }
        let start = Instant::now();
        go.send(start)
            .map_err(|_| anyhow::anyhow!("the sender thread is gone"))?;
        Ok((sender, start))
    }

    fn has_ended(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Joins the sender: its lateness histogram, or the error it stopped on.
    fn finish(&mut self) -> anyhow::Result<Histogram<u64>> {
        let thread = self
            .thread
            .take()
            .context("the sender was already joined")?;
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?
            .context("the sender")
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Sleeps until `due_ns` after `start`: a sleep to within [`SPIN`] of it, then a spin.
fn wait_until(start: Instant, due_ns: u64) {
    let due = start + Duration::from_nanos(due_ns);
    let now = Instant::now();
    if due > now + SPIN {
        std::thread::sleep(due - now - SPIN);
    }
    while Instant::now() < due {
        std::hint::spin_loop();
    }
}

/// Asks Linux for a 1 ns timer slack on this thread (the default 50 µs lets every sleep
/// overshoot by up to that much).
fn precise_sleeps() {
    #[cfg(target_os = "linux")]
    {
        let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1));
    }
}

#[cfg(test)]
mod tests {
    use super::super::servers;
    use super::*;

    #[test]
    fn every_request_is_measured_against_its_schedule() {
        let server = servers::echo();
        let measured = open_loop(server.addr, 4, 2_000, Duration::from_millis(100)).unwrap();
        // 2000/s for 100 ms: 200 requests, every one answered and measured once.
        assert_eq!(measured.corrected.len(), 200);
        assert_eq!(measured.from_send.len(), 200);
        assert_eq!(measured.send_lateness.len(), 200);
        assert_eq!(server.echoed(), 200 + 4);
        // Each corrected sample is its from-send sample plus the sender's lateness for that
        // request, so no corrected value exceeds the two largest together (with the
        // histograms' 0.1 % rounding).
        let bound = (measured.from_send.max() + measured.send_lateness.max()) as f64 * 1.002;
        assert!(
            measured.corrected.max() as f64 <= bound,
            "{} > {bound}",
            measured.corrected.max()
        );
    }

    #[test]
    fn the_schedule_spreads_requests_evenly() {
        let schedule = Schedule { rate: 3 };
        let due: Vec<u64> = (0..4).map(|s| schedule.due_ns(s)).collect();
        assert_eq!(due, [0, 333_333_333, 666_666_666, 1_000_000_000]);
    }

    #[test]
    fn replies_out_of_order_are_an_error() {
        let server = servers::swapping();
        let error = open_loop(server.addr, 1, 1_000, Duration::from_millis(20)).unwrap_err();
        assert!(error.to_string().contains("expected"), "{error:#}");
    }

    #[test]
    fn a_server_that_stops_answering_is_an_error_not_a_hang() {
        let server = servers::silent_after_priming();
        let error = open_loop_within(
            server.addr,
            2,
            1_000,
            Duration::from_millis(20),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(error.to_string().starts_with("no reply for"), "{error:#}");
    }

    #[test]
    fn impossible_rates_are_refused() {
        let server = servers::echo();
        for rate in [0, 2_000_000_000] {
            let error = open_loop(server.addr, 1, rate, Duration::from_millis(10)).unwrap_err();
            assert!(error.to_string().contains("outside"), "{error:#}");
        }
    }
}
