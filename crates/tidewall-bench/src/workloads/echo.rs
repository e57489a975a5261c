//! TCP echo on loopback: an echo server on the runtime under test, written with that
//! runtime's own net APIs (one task per connection, TCP_NODELAY), driven by the same
//! runtime-independent load generator ([`crate::loadgen`]) for every runtime.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;

use super::Measurement;
use crate::loadgen;
use crate::runtimes::{Rt, RuntimeKind};
use crate::stats::Summary;

const LOOPBACK: &str = "127.0.0.1:0";

/// The connections the open-loop latency run spreads its requests over.
pub(super) const LATENCY_CONNECTIONS: usize = 16;

/// A running echo server; dropping it stops accepting (open connections end when the
/// generator closes them) and, for monoio, ends its thread.
pub(super) struct Server {
    pub(super) addr: SocketAddr,
    stop: Option<async_channel::Sender<()>>,
    /// monoio's server thread.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            // monoio's `block_on` is not woken from another thread (that needs its `sync`
            // feature), so the closed stop channel goes unseen until the thread wakes: one
            // more connection completes its accept, and the loop then sees the stop.
            let _ = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
            let _ = thread.join();
        }
    }
}

/// µs per request, closed loop: `connections` connections, one request outstanding on each,
/// `requests` in all.
pub(super) fn throughput(rt: &Rt, connections: usize, requests: u64) -> anyhow::Result<f64> {
    let server = serve(rt)?;
    let took = loadgen::closed_loop(server.addr, connections, requests)?;
    Ok(took.as_secs_f64() * 1e6 / requests as f64)
}

/// Open loop at `rate` requests a second for `duration`: latency percentiles (µs),
/// coordinated omission corrected.
pub(super) fn latency(rt: &Rt, rate: u64, duration: Duration) -> anyhow::Result<Measurement> {
    let server = serve(rt)?;
    // A short warm-up at the same rate (connections, buffers, the runtime's threads).
    loadgen::open_loop(
        server.addr,
        LATENCY_CONNECTIONS,
        rate,
        Duration::from_millis(100),
    )?;
    let run = loadgen::open_loop(server.addr, LATENCY_CONNECTIONS, rate, duration)?;
    let q = loadgen::quantile_us;
    Ok(Measurement {
        unit: "µs (p50)".to_owned(),
        summary: Summary::of(vec![q(&run.corrected, 0.5)]),
        extra: vec![
            ("µs (p99)".to_owned(), q(&run.corrected, 0.99)),
            ("µs (p99.9)".to_owned(), q(&run.corrected, 0.999)),
            ("µs (max)".to_owned(), q(&run.corrected, 1.0)),
            (
                "µs p99 from actual send".to_owned(),
                q(&run.from_send, 0.99),
            ),
            (
                "µs generator late p50".to_owned(),
                q(&run.send_lateness, 0.5),
            ),
            (
                "µs generator late p99".to_owned(),
                q(&run.send_lateness, 0.99),
            ),
        ],
        extra_rounds: Vec::new(),
    })
}

/// Spawns, with `$spawner`, a task that binds `$listener` on loopback, reports its address
/// on `$ready`, and accepts until `$stopped` closes (or accepting fails: the generator then
/// sees refused or unanswered connections and fails the run), spawning `$echo(stream)` per
/// connection.
macro_rules! spawn_server {
    ($spawner:expr, $listener:ty, $echo:path, $ready:expr, $stopped:expr) => {{
        let (spawner, ready, stopped) = ($spawner, $ready, $stopped);
        spawner.clone().spawn_detached(async move {
            let listener = match <$listener>::bind(LOOPBACK).await {
                Ok(listener) => listener,
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return;
                }
            };
            let _ = ready.send(listener.local_addr());
            let accept = async {
                while let Ok((stream, _)) = listener.accept().await {
                    let _ = stream.set_nodelay(true);
                    spawner.spawn_detached($echo(stream));
                }
            };
            futures_lite::future::or(accept, async {
                let _ = stopped.recv().await;
            })
            .await;
        });
    }};
}

/// Starts an echo server on `rt` and waits until it listens.
pub(super) fn serve(rt: &Rt) -> anyhow::Result<Server> {
    let (stop, stopped) = async_channel::bounded::<()>(1);
    let (ready, listening) = mpsc::channel::<std::io::Result<SocketAddr>>();
    let mut thread = None;
    match rt.kind() {
        RuntimeKind::TokioMt | RuntimeKind::TokioCt => {
            spawn_server!(
                rt.spawner(),
                tokio::net::TcpListener,
                echo_tokio,
                ready,
                stopped
            );
        }
        RuntimeKind::Smol => {
            spawn_server!(
                rt.spawner(),
                smol::net::TcpListener,
                echo_futures_io,
                ready,
                stopped
            );
        }
        RuntimeKind::AsyncStd => {
            spawn_server!(
                rt.spawner(),
                async_std::net::TcpListener,
                echo_futures_io,
                ready,
                stopped
            );
        }
        RuntimeKind::Monoio => thread = Some(monoio_server(ready, stopped)?),
        RuntimeKind::Embassy => anyhow::bail!("embassy has no network stack on the host"),
    }
    let addr = listening
        .recv_timeout(Duration::from_secs(10))
        .context("the echo server did not start")?
        .context("binding the echo server")?;
    Ok(Server {
        addr,
        stop: Some(stop),
        thread,
    })
}

/// Echoes until the peer closes: tokio's I/O traits.
async fn echo_tokio(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buffer = vec![0u8; 4096];
    while let Ok(read @ 1..) = stream.read(&mut buffer).await {
        if stream.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// Echoes until the peer closes: the `futures-io` traits (smol's and async-std's streams).
async fn echo_futures_io<S>(mut stream: S)
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    use futures_lite::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buffer = vec![0u8; 4096];
    while let Ok(read @ 1..) = stream.read(&mut buffer).await {
        if stream.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// monoio's server runs on a thread of its own (thread-per-core: its tasks are `!Send`), on
/// the io_uring driver only, until `stopped` closes.
#[cfg(target_os = "linux")]
fn monoio_server(
    ready: mpsc::Sender<std::io::Result<SocketAddr>>,
    stopped: async_channel::Receiver<()>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    Ok(std::thread::Builder::new()
        .name("monoio".to_owned())
        .spawn(move || {
            let mut runtime = match monoio::RuntimeBuilder::<monoio::IoUringDriver>::new().build() {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = ready.send(Err(error));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match monoio::net::TcpListener::bind(LOOPBACK) {
                    Ok(listener) => listener,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                let _ = ready.send(listener.local_addr());
                let accept = async {
                    while let Ok((stream, _)) = listener.accept().await {
                        let _ = stream.set_nodelay(true);
                        monoio::spawn(echo_monoio(stream));
                    }
                };
                futures_lite::future::or(accept, async {
                    let _ = stopped.recv().await;
                })
                .await;
            });
        })?)
}

#[cfg(not(target_os = "linux"))]
fn monoio_server(
    _ready: mpsc::Sender<std::io::Result<SocketAddr>>,
    _stopped: async_channel::Receiver<()>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    anyhow::bail!("monoio's io_uring driver is Linux-only")
}

/// Echoes until the peer closes: monoio's owned-buffer ("rent") I/O.
#[cfg(target_os = "linux")]
async fn echo_monoio(mut stream: monoio::net::TcpStream) {
    use monoio::io::{AsyncReadRent as _, AsyncWriteRentExt as _};
    let mut buffer = Vec::with_capacity(4096);
    loop {
        buffer.clear();
        let (read, returned) = stream.read(buffer).await;
        buffer = returned;
        if !matches!(read, Ok(1..)) {
            return;
        }
        let (written, returned) = stream.write_all(buffer).await;
        buffer = returned;
        if written.is_err() {
            return;
        }
    }
}
