//! A TCP proxy in front of a redis-server that a test switches between passing bytes, losing
//! every request (a partition) and resetting every connection, and that counts each
//! `EVALSHA` sent through it.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::RedisServer;

/// What the [`Gate`] does with the holder's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Bytes flow both ways.
    Pass,
    /// Requests are read and thrown away (the connection stays up, nothing is answered); a
    /// connection that lost one is cut as soon as the mode leaves `Blackhole`, as a real
    /// partition leaves a connection whose bytes never arrived.
    Blackhole,
    /// Every connection is cut at once, and each new one is accepted and closed at once.
    Refuse,
}

/// One proxied connection: clones of both sockets (to cut them) and whether it lost a request.
struct Link {
    client: TcpStream,
    server: TcpStream,
    lost: Arc<AtomicBool>,
}

impl Link {
    fn cut(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

#[derive(Default)]
struct GateState {
    mode: Mutex<Option<Mode>>,
    links: Mutex<Vec<Link>>,
    /// The instant of every `EVALSHA` the holder sent (lost or not).
    evalsha: Mutex<Vec<Instant>>,
}

impl GateState {
    fn mode(&self) -> Mode {
        self.mode.lock().unwrap().unwrap_or(Mode::Pass)
    }
}

/// A TCP proxy in front of a redis-server whose [`Mode`] the test switches.
pub(crate) struct Gate {
    port: u16,
    stop: Arc<AtomicBool>,
    state: Arc<GateState>,
}

/// Finds `EVALSHA` (any case) in `scan`, records one instant per occurrence, and keeps only
/// the tail a split occurrence could start in.
fn take_evalsha(scan: &mut Vec<u8>, at: Instant, seen: &Mutex<Vec<Instant>>) {
    const WORD: &[u8] = b"EVALSHA";
    let upper = scan.to_ascii_uppercase();
    let mut from = 0;
    while let Some(pos) = upper[from..].windows(WORD.len()).position(|w| w == WORD) {
        seen.lock().unwrap().push(at);
        from += pos + WORD.len();
    }
    let keep = from.max(scan.len().saturating_sub(WORD.len() - 1));
    scan.drain(..keep);
}

impl Gate {
    pub(crate) fn start(server: &RedisServer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(GateState::default());
        let (stopped, shared, upstream) = (Arc::clone(&stop), Arc::clone(&state), server.port());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = client else { continue };
                if shared.mode() == Mode::Refuse {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let lost = Arc::new(AtomicBool::new(false));
                let (Ok(c2), Ok(s2), Ok(mut requests), Ok(mut to_server)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) else {
                    continue;
                };
                shared.links.lock().unwrap().push(Link {
                    client: c2,
                    server: s2,
                    lost: Arc::clone(&lost),
                });
                let (mut replies, mut to_client) = (server, client);
                let pump = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 16 * 1024];
                    let mut scan = Vec::new();
                    while let Ok(n @ 1..) = requests.read(&mut buffer) {
                        scan.extend_from_slice(&buffer[..n]);
                        take_evalsha(&mut scan, Instant::now(), &pump.evalsha);
                        match pump.mode() {
                            Mode::Pass if !lost.load(Ordering::SeqCst) => {
                                if to_server.write_all(&buffer[..n]).is_err() {
                                    break;
                                }
                            }
                            Mode::Blackhole => lost.store(true, Ordering::SeqCst),
                            Mode::Pass | Mode::Refuse => break,
                        }
                    }
                    let _ = requests.shutdown(Shutdown::Both);
                    let _ = to_server.shutdown(Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut replies, &mut to_client);
                    let _ = to_client.shutdown(Shutdown::Both);
                });
            }
        });
        Self { port, stop, state }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Switches the mode: leaving `Blackhole` cuts the connections that lost a request;
    /// `Refuse` cuts them all.
    pub(crate) fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = Some(mode);
        let mut links = self.state.links.lock().unwrap();
        links.retain(|link| {
            let cut = match mode {
                Mode::Refuse => true,
                Mode::Pass => link.lost.load(Ordering::SeqCst),
                Mode::Blackhole => false,
            };
            if cut {
                link.cut();
            }
            !cut
        });
    }

    /// The `EVALSHA`s the holder sent at or after `from` and before `until`.
    pub(crate) fn evalsha_between(&self, from: Instant, until: Instant) -> usize {
        self.state
            .evalsha
            .lock()
            .unwrap()
            .iter()
            .filter(|at| (from..until).contains(*at))
            .count()
    }

    /// Every `EVALSHA` the holder sent so far.
    pub(crate) fn evalsha_total(&self) -> usize {
        self.state.evalsha.lock().unwrap().len()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.set(Mode::Refuse);
        // Wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
