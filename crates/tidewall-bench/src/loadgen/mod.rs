//! The TCP load generator: the same client for every runtime, so only the echo server (on the
//! runtime under test, with its own net APIs) differs between runs.
//!
//! It is plain threads and `mio` (one poller for any number of connections), not an async
//! runtime: a generator built on one of the runtimes under test would favour it. Every
//! request is 16 bytes — its sequence number and the nanosecond it was sent — and the server
//! echoes it back, so every reply is checked against the request it answers.
//!
//! Before anything is timed, every connection makes one round trip ([`prime`]): the server
//! has then accepted it and started its task, so connection set-up is never in a figure.

mod closed;
mod open;
#[cfg(test)]
mod servers;

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

pub(crate) use closed::closed_loop;
pub(crate) use open::open_loop;

/// Bytes per request (and per reply).
const MESSAGE: usize = 16;

/// The sequence number of the priming round trip (never a real request's).
const PRIME: u64 = u64::MAX;

/// How long the generator waits for a reply, or for room to send, before it calls the server
/// stalled.
const STALL: Duration = Duration::from_secs(10);

/// Connects `count` sockets to `addr` (TCP_NODELAY, non-blocking), each registered with `poll`
/// under its index, and primes them (within [`STALL`], whatever the run's own limit).
fn connect(addr: SocketAddr, count: usize, poll: &mut Poll) -> anyhow::Result<Vec<TcpStream>> {
    let mut streams = (0..count)
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
        .collect::<anyhow::Result<Vec<_>>>()?;
    prime(&mut streams, poll)?;
    Ok(streams)
}

/// One untimed round trip on every connection.
fn prime(streams: &mut [TcpStream], poll: &mut Poll) -> anyhow::Result<()> {
    let deadline = Instant::now() + STALL;
    for stream in streams.iter_mut() {
        send(stream, &encode(PRIME, 0), deadline, None)?;
    }
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); streams.len()];
    let mut primed = vec![false; streams.len()];
    let mut remaining = streams.len();
    let mut events = Events::with_capacity(1024);
    while remaining > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "priming: {remaining} connection(s) unanswered after {STALL:?}"
        );
        wait(poll, &mut events, left)?;
        for event in &events {
            let i = event.token().0;
            drain(&mut streams[i], &mut pending[i], |reply| {
                ensure!(
                    decode(reply).0 == PRIME && !primed[i],
                    "connection {i}: a reply before any request"
                );
                primed[i] = true;
                remaining -= 1;
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// `poll.poll`, again when a signal interrupts it.
fn wait(poll: &mut Poll, events: &mut Events, timeout: Duration) -> anyhow::Result<()> {
    loop {
        match poll.poll(events, Some(timeout)) {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            other => return Ok(other?),
        }
    }
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
/// (16-byte messages); when it is, waits its turn (a message is never dropped) until
/// `deadline`, after which the server is stalled and the run an error, or until `stop` is
/// raised (the run failed elsewhere).
fn send(
    stream: &mut TcpStream,
    bytes: &[u8],
    deadline: Instant,
    stop: Option<&AtomicBool>,
) -> anyhow::Result<()> {
    let mut rest = bytes;
    while !rest.is_empty() {
        match stream.write(rest) {
            Ok(0) => bail!("the server closed the connection"),
            Ok(written) => rest = &rest[written..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                ensure!(
                    Instant::now() < deadline,
                    "the server stopped reading: the send buffer stayed full"
                );
                ensure!(!stop.is_some_and(|s| s.load(Ordering::Relaxed)), "stopped");
                std::thread::sleep(Duration::from_micros(50));
            }
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
    let closed = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break true,
            Ok(read) => pending.extend_from_slice(&buffer[..read]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    };
    // Replies that came before a close still count (and are checked).
    let complete = pending.len() / MESSAGE * MESSAGE;
    for reply in pending[..complete].chunks_exact(MESSAGE) {
        on_reply(reply)?;
    }
    pending.drain(..complete);
    ensure!(!closed, "the server closed the connection");
    Ok(())
}

/// A histogram of ns values from 1 ns to 60 s, 3 significant digits.
fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)
}

/// A histogram's `q` quantile in µs (values are recorded in ns).
pub(crate) fn quantile_us(histogram: &Histogram<u64>, q: f64) -> f64 {
    histogram.value_at_quantile(q) as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        assert_eq!(decode(&encode(7, 123_456)), (7, 123_456));
    }
}
