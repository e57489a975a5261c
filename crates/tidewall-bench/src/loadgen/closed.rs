//! Closed loop: each connection keeps one request outstanding (throughput).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::ensure;
use mio::{Events, Poll};

use super::{STALL, connect, decode, drain, encode, send, wait};

/// `connections` connections, each with one request outstanding, until `requests` replies
/// have come back. Returns the time from the first request to the last reply (connections
/// set up and primed before). Every reply must echo its connection's last request.
pub(crate) fn closed_loop(
    addr: SocketAddr,
    connections: usize,
    requests: u64,
) -> anyhow::Result<Duration> {
    closed_loop_within(addr, connections, requests, STALL)
}

pub(super) fn closed_loop_within(
    addr: SocketAddr,
    connections: usize,
    requests: u64,
    stall: Duration,
) -> anyhow::Result<Duration> {
    ensure!(connections > 0, "no connections");
    let mut poll = Poll::new()?;
    let mut streams = connect(addr, connections, &mut poll)?;
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); connections];
    let mut last_sent: Vec<Option<u64>> = vec![None; connections];
    let (mut sent, mut received) = (0u64, 0u64);
    let start = Instant::now();
    for (i, stream) in streams.iter_mut().enumerate() {
        if sent < requests {
            send(stream, &encode(sent, 0), Instant::now() + stall, None)?;
            last_sent[i] = Some(sent);
            sent += 1;
        }
    }
    let mut events = Events::with_capacity(1024);
    while received < requests {
        wait(&mut poll, &mut events, stall)?;
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
                send(
                    &mut streams[i],
                    &encode(sent, 0),
                    Instant::now() + stall,
                    None,
                )?;
                last_sent[i] = Some(sent);
                sent += 1;
            }
        }
    }
    Ok(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::super::servers;
    use super::*;

    #[test]
    fn every_request_is_echoed_once_and_answered() {
        for connections in [1, 3, 16] {
            let server = servers::echo();
            closed_loop(server.addr, connections, 500).unwrap();
            // 500 requests plus one priming round trip per connection, no more, no fewer.
            assert_eq!(server.echoed(), 500 + connections as u64);
        }
    }

    #[test]
    fn a_reply_that_answers_no_request_is_an_error() {
        let server = servers::tampering();
        let error = closed_loop(server.addr, 2, 10).unwrap_err();
        assert!(
            error.to_string().contains("answers no outstanding request"),
            "{error:#}"
        );
    }

    #[test]
    fn a_server_that_stops_answering_is_an_error_not_a_hang() {
        let server = servers::silent_after_priming();
        let error = closed_loop_within(server.addr, 2, 10, Duration::from_millis(200)).unwrap_err();
        assert!(error.to_string().starts_with("no reply for"), "{error:#}");
    }
}
