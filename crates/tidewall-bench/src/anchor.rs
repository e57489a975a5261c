//! W0, the anchor probe: what this machine costs for the operations every runtime is built
//! on. Measured first, in the parent process, with no runtime; every other figure is also
//! shown as a multiple of these, and a result far outside its plausible band is flagged.

use std::hint::black_box;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::stats::Summary;

/// The machine's floor, each figure a median over repetitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Anchors {
    /// An uncontended atomic `fetch_add`, ns.
    pub(crate) atomic_ns: Summary,
    /// `Instant::now()`, ns.
    pub(crate) clock_ns: Summary,
    /// A futex wake with no waiter (a syscall and nothing else), ns.
    pub(crate) futex_wake_ns: Summary,
    /// Two OS threads handing a token back and forth (park/unpark), µs per round trip: the
    /// cost of a cross-thread wake-up on this machine, which is what a multi-threaded
    /// runtime's ping-pong pays.
    pub(crate) thread_ping_pong_us: Summary,
    /// A loopback TCP round trip of one byte with blocking sockets, µs.
    pub(crate) tcp_round_trip_us: Summary,
}

/// How many operations one repetition times, by probe.
struct Sizes {
    tight: u64,
    syscalls: u64,
    round_trips: u64,
}

pub(crate) fn measure(quick: bool) -> anyhow::Result<Anchors> {
    let sizes = if quick {
        Sizes {
            tight: 1_000_000,
            syscalls: 20_000,
            round_trips: 500,
        }
    } else {
        Sizes {
            tight: 10_000_000,
            syscalls: 200_000,
            round_trips: 5_000,
        }
    };
    let reps = if quick { 3 } else { 7 };
    Ok(Anchors {
        atomic_ns: repeat(reps, || per_op_ns(sizes.tight, atomic_op)),
        clock_ns: repeat(reps, || per_op_ns(sizes.tight / 10, clock_read)),
        futex_wake_ns: repeat(reps, || per_op_ns(sizes.syscalls, futex_wake)),
        thread_ping_pong_us: repeat(reps, || thread_ping_pong_us(sizes.round_trips)),
        tcp_round_trip_us: try_repeat(reps, || tcp_round_trip_us(sizes.round_trips))?,
    })
}

fn repeat(reps: usize, mut once: impl FnMut() -> f64) -> Summary {
    once(); // warm-up, discarded
    Summary::of((0..reps).map(|_| once()).collect())
}

fn try_repeat(
    reps: usize,
    mut once: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<Summary> {
    once()?;
    let samples = (0..reps)
        .map(|_| once())
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Summary::of(samples))
}

fn per_op_ns(ops: u64, mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..ops {
        op();
    }
    start.elapsed().as_nanos() as f64 / ops as f64
}

fn atomic_op() {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    black_box(COUNTER.fetch_add(1, Ordering::SeqCst));
}

fn clock_read() {
    black_box(Instant::now());
}

#[cfg(target_os = "linux")]
fn futex_wake() {
    use rustix::thread::futex;
    static WORD: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let _ = black_box(futex::wake(&WORD, futex::Flags::PRIVATE, 1));
}

#[cfg(not(target_os = "linux"))]
fn futex_wake() {
    // No futex elsewhere: an unpark of the current thread is the nearest portable primitive.
    std::thread::current().unpark();
}

/// Two threads pass a turn back and forth `round_trips` times through park/unpark.
fn thread_ping_pong_us(round_trips: u64) -> f64 {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    let turn = Arc::new(AtomicU64::new(0));
    let main = std::thread::current();
    let partner_turn = Arc::clone(&turn);
    let partner = std::thread::spawn(move || {
        for i in 0..round_trips {
            while partner_turn.load(Ordering::Acquire) != 2 * i + 1 {
                std::thread::park();
            }
            partner_turn.store(2 * i + 2, Ordering::Release);
            main.unpark();
        }
    });
    let partner_thread = partner.thread().clone();
    let start = Instant::now();
    for i in 0..round_trips {
        turn.store(2 * i + 1, Ordering::Release);
        partner_thread.unpark();
        while turn.load(Ordering::Acquire) != 2 * i + 2 {
            std::thread::park();
        }
    }
    let elapsed = start.elapsed();
    partner.join().ok();
    elapsed.as_secs_f64() * 1e6 / round_trips as f64
}

/// One byte to a loopback echo thread and back, `round_trips` times, TCP_NODELAY on.
fn tcp_round_trip_us(round_trips: u64) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte)? {
                0 => return Ok(()),
                _ => stream.write_all(&byte)?,
            }
        }
    });
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut byte = [7u8; 1];
    let start = Instant::now();
    for _ in 0..round_trips {
        stream.write_all(&byte)?;
        stream.read_exact(&mut byte)?;
    }
    let elapsed = start.elapsed();
    drop(stream);
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    Ok(elapsed.as_secs_f64() * 1e6 / round_trips as f64)
}
