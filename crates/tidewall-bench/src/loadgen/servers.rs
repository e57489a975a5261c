//! Blocking test servers (a thread per connection) that echo, or misbehave on purpose.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{MESSAGE, PRIME, decode, encode};

pub(super) struct TestServer {
    pub(super) addr: SocketAddr,
    echoed: Arc<AtomicU64>,
}

impl TestServer {
    /// Messages echoed so far.
    pub(super) fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::SeqCst)
    }
}

/// Serves every connection with `handle(stream, echoed)` on a thread of its own.
fn serve(handle: fn(TcpStream, &AtomicU64)) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let echoed = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&echoed);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || handle(stream, &counter));
        }
    });
    TestServer { addr, echoed }
}

/// Echoes every message, counting them.
pub(super) fn echo() -> TestServer {
    serve(|mut stream, echoed| {
        let mut message = [0u8; MESSAGE];
        while stream.read_exact(&mut message).is_ok() {
            // Counted before the reply leaves, so a client that has its last reply never
            // reads a count that is behind.
            echoed.fetch_add(1, Ordering::SeqCst);
            if stream.write_all(&message).is_err() {
                return;
            }
        }
    })
}

/// Answers the priming round trip, then every request with the wrong sequence number.
pub(super) fn tampering() -> TestServer {
    serve(|mut stream, _| {
        let mut message = [0u8; MESSAGE];
        while stream.read_exact(&mut message).is_ok() {
            let (sequence, sent) = decode(&message);
            let answer = if sequence == PRIME {
                message
            } else {
                encode(sequence + 1, sent)
            };
            if stream.write_all(&answer).is_err() {
                return;
            }
        }
    })
}

/// Answers the priming round trip, then reads and never answers.
pub(super) fn silent_after_priming() -> TestServer {
    serve(|mut stream, _| {
        let mut message = [0u8; MESSAGE];
        if stream.read_exact(&mut message).is_err() || stream.write_all(&message).is_err() {
            return;
        }
        while stream.read_exact(&mut message).is_ok() {}
    })
}

/// Answers the priming round trip, then each pair of requests in swapped order.
pub(super) fn swapping() -> TestServer {
    serve(|mut stream, _| {
        let mut first = [0u8; MESSAGE];
        if stream.read_exact(&mut first).is_err() || stream.write_all(&first).is_err() {
            return;
        }
        let mut pair = [0u8; 2 * MESSAGE];
        while stream.read_exact(&mut pair).is_ok() {
            let (a, b) = pair.split_at(MESSAGE);
            if stream.write_all(b).is_err() || stream.write_all(a).is_err() {
                return;
            }
        }
    })
}
