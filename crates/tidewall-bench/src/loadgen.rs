//! The TCP load generator: the same client for every runtime, so only the echo server (on the
//! runtime under test, with its own net APIs) differs between runs.
//!
//! It is plain threads and `mio` (one poller for any number of connections), not an async
//! runtime: a generator built on one of the runtimes under test would favour it. Every
//! request is 16 bytes — its sequence number and the nanosecond it was sent — and the server
//! echoes it back, so every reply is checked against the request it answers.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// Bytes per request (and per reply).
const MESSAGE: usize = 16;

/// How long the generator waits for a reply before it calls the server stalled.
const STALL: Duration = Duration::from_secs(10);

/// Connects `count` sockets to `addr` (TCP_NODELAY, non-blocking), each registered with `poll`
/// under its index.
fn connect(addr: SocketAddr, count: usize, poll: &Poll) -> anyhow::Result<Vec<TcpStream>> {
    (0..count)
        .map(|i| {
            let stream = std::net::TcpStream::connect(addr)
                .with_context(|| format!("connection {i} of {count} to {addr}"))?;
            stream.set_nodelay(true)?;
            stream.set_nonblocking(true)?;
            let mut stream = TcpStream::from_std(stream);
            poll.registry()
                .register(&mut stream, Token(i), Interest::READABLE)?;
            Ok(stream)
        })
        .collect()
}

fn encode(sequence: u64, sent_ns: u64) -> [u8; MESSAGE] {
    let mut message = [0; MESSAGE];
    message[..8].copy_from_slice(&sequence.to_le_bytes());
    message[8..].copy_from_slice(&sent_ns.to_le_bytes());
    message
}

fn decode(message: &[u8]) -> (u64, u64) {
    let word = |range: std::ops::Range<usize>| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&message[range]);
        u64::from_le_bytes(bytes)
    };
    (word(0..8), word(8..16))
}

/// Writes all of `bytes` to a non-blocking socket whose send buffer is almost never full
/// (16-byte messages); when it is, the generator waits its turn rather than dropping one.
fn send(stream: &mut TcpStream, bytes: &[u8]) -> anyhow::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        match stream.write(rest) {
            Ok(0) => bail!("the server closed the connection"),
            Ok(written) => rest = &rest[written..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads everything available on `stream` onto `pending`, then hands each complete reply to
/// `on_reply` (a partial one stays in `pending` for the next read).
fn drain(
    stream: &mut TcpStream,
    pending: &mut Vec<u8>,
    mut on_reply: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => bail!("the server closed the connection"),
            Ok(read) => pending.extend_from_slice(&buffer[..read]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let complete = pending.len() / MESSAGE * MESSAGE;
    for reply in pending[..complete].chunks_exact(MESSAGE) {
        on_reply(reply)?;
    }
    pending.drain(..complete);
    Ok(())
}

/// Closed loop: `connections` connections, each with one request outstanding, until
/// `requests` replies have come back. Returns the time from the first request to the last
/// reply. Every reply must echo its connection's last request.
pub(crate) fn closed_loop(
    addr: SocketAddr,
    connections: usize,
    requests: u64,
) -> anyhow::Result<Duration> {
    closed_loop_within(addr, connections, requests, STALL)
}

fn closed_loop_within(
    addr: SocketAddr,
    connections: usize,
    requests: u64,
    stall: Duration,
) -> anyhow::Result<Duration> {
    ensure!(connections > 0, "no connections");
    let mut poll = Poll::new()?;
    let mut streams = connect(addr, connections, &poll)?;
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); connections];
    let mut last_sent: Vec<Option<u64>> = vec![None; connections];
    let (mut sent, mut received) = (0u64, 0u64);
    let start = Instant::now();
    for (i, stream) in streams.iter_mut().enumerate() {
        if sent < requests {
            send(stream, &encode(sent, 0))?;
            last_sent[i] = Some(sent);
            sent += 1;
        }
    }
    let mut events = Events::with_capacity(1024);
    while received < requests {
        poll.poll(&mut events, Some(stall))?;
        ensure!(
            !events.is_empty(),
            "no reply for {stall:?}: {received} of {requests} came back"
        );
        for event in &events {
            let i = event.token().0;
            let mut replies = 0;
            drain(&mut streams[i], &mut pending[i], |reply| {
                let (sequence, _) = decode(reply);
                ensure!(
                    last_sent[i].take() == Some(sequence),
                    "connection {i}: reply {sequence} answers no outstanding request"
                );
                replies += 1;
                Ok(())
            })?;
            received += replies;
            if replies > 0 && sent < requests {
                send(&mut streams[i], &encode(sent, 0))?;
                last_sent[i] = Some(sent);
                sent += 1;
            }
        }
    }
    Ok(start.elapsed())
}

/// What an open-loop run measured, in µs.
#[derive(Debug)]
pub(crate) struct OpenLoop {
    /// From each request's *intended* send time to its reply: coordinated omission corrected
    /// (a stalled server delays the requests that were due, and they count).
    pub(crate) corrected: Histogram<u64>,
    /// From each request's actual send time to its reply (what a closed-loop client sees).
    pub(crate) uncorrected: Histogram<u64>,
    /// How late the generator itself sent, against the schedule (its own floor).
    pub(crate) send_lateness: Histogram<u64>,
}

/// Open loop: `rate` requests a second for `duration`, spread round-robin over
/// `connections`, sent on schedule whatever the replies do (a sender thread), while this
/// thread reads the replies. Every request must come back, in order per connection.
pub(crate) fn open_loop(
    addr: SocketAddr,
    connections: usize,
    rate: u64,
    duration: Duration,
) -> anyhow::Result<OpenLoop> {
    ensure!(connections > 0 && rate > 0, "no connections or no rate");
    let mut poll = Poll::new()?;
    let mut streams = connect(addr, connections, &poll)?;
    // The sender writes through duplicates of the same sockets.
    let mut senders = streams
        .iter()
        .map(|s| {
            let fd = std::os::fd::AsFd::as_fd(s).try_clone_to_owned()?;
            Ok(TcpStream::from_std(std::net::TcpStream::from(fd)))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let interval_ns = 1_000_000_000 / rate;
    let total = u64::try_from(duration.as_nanos() / u128::from(interval_ns))?.max(1);
    let histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3);
    let (mut corrected, mut uncorrected) = (histogram()?, histogram()?);
    let start = Instant::now();
    let since_start = move || u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
    let sender = std::thread::Builder::new()
        .name("loadgen-send".to_owned())
        .spawn(move || -> anyhow::Result<Histogram<u64>> {
            let mut lateness = histogram()?;
            let count = senders.len() as u64;
            for sequence in 0..total {
                let intended = sequence * interval_ns;
                let now = since_start();
                if now < intended {
                    std::thread::sleep(Duration::from_nanos(intended - now));
                }
                let sent = since_start();
                lateness.saturating_record(sent.saturating_sub(intended).max(1));
                let i = usize::try_from(sequence % count)?;
                send(&mut senders[i], &encode(sequence, sent))?;
            }
            Ok(lateness)
        })?;
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); connections];
    let mut next: Vec<u64> = (0..connections as u64).collect();
    let mut events = Events::with_capacity(1024);
    let mut received = 0u64;
    while received < total {
        poll.poll(&mut events, Some(STALL))?;
        ensure!(
            !events.is_empty(),
            "no reply for {STALL:?}: {received} of {total} came back"
        );
        for event in &events {
            let i = event.token().0;
            drain(&mut streams[i], &mut pending[i], |reply| {
                let now = since_start();
                let (sequence, sent) = decode(reply);
                ensure!(
                    sequence == next[i],
                    "connection {i}: reply {sequence}, expected {}",
                    next[i]
                );
                next[i] += connections as u64;
                corrected.saturating_record(now.saturating_sub(sequence * interval_ns).max(1));
                uncorrected.saturating_record(now.saturating_sub(sent).max(1));
                received += 1;
                Ok(())
            })?;
        }
    }
    let send_lateness = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))??;
    Ok(OpenLoop {
        corrected,
        uncorrected,
        send_lateness,
    })
}

/// A histogram's `q` quantile in µs (values are recorded in ns).
pub(crate) fn quantile_us(histogram: &Histogram<u64>, q: f64) -> f64 {
    histogram.value_at_quantile(q) as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blocking echo server on a plain thread, one thread per connection.
    fn echo_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 4096];
                    while let Ok(read @ 1..) = stream.read(&mut buffer) {
                        if stream.write_all(&buffer[..read]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    #[test]
    fn messages_round_trip() {
        assert_eq!(decode(&encode(7, 123_456)), (7, 123_456));
    }

    #[test]
    fn the_closed_loop_gets_every_reply_back() {
        let addr = echo_server();
        for connections in [1, 3, 16] {
            let took = closed_loop(addr, connections, 500).unwrap();
            assert!(took > Duration::ZERO);
        }
    }

    #[test]
    fn the_open_loop_measures_every_request_against_its_schedule() {
        let addr = echo_server();
        let measured = open_loop(addr, 4, 2_000, Duration::from_millis(100)).unwrap();
        // 2000/s for 100 ms: 200 requests, every one answered and measured.
        assert_eq!(measured.corrected.len(), 200);
        assert_eq!(measured.uncorrected.len(), 200);
        assert_eq!(measured.send_lateness.len(), 200);
        // Measured from an earlier instant, the corrected latency is never the smaller.
        assert!(
            measured.corrected.value_at_quantile(0.5)
                >= measured.uncorrected.value_at_quantile(0.5)
        );
    }

    #[test]
    fn a_server_that_never_answers_is_an_error_not_a_hang() {
        // Accepts and reads, never writes: the generator must give up after its stall limit
        // rather than wait for ever (checked with the closed loop, the quicker to set up).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
        let error = closed_loop_within(addr, 2, 10, Duration::from_millis(200)).unwrap_err();
        assert!(error.to_string().contains("no reply"), "{error:#}");
    }
}
