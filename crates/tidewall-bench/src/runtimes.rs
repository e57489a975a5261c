//! The runtimes under test, driven through their own APIs (not Tidewall's seam, whose
//! adapters add a panic-catching wrapper on smol and async-std), with an equal, stated number
//! of worker threads.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};

use crate::workloads::Workload;

/// A runtime flavour the suite measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RuntimeKind {
    /// tokio's work-stealing multi-thread scheduler.
    TokioMt,
    /// tokio's current-thread scheduler (one thread, the caller's).
    TokioCt,
    /// smol: an explicit `async_executor::Executor` run by N threads.
    Smol,
    /// async-std's global executor, N threads (`ASYNC_STD_THREAD_COUNT`). Discontinued upstream.
    AsyncStd,
    /// monoio: a thread-per-core runtime on io_uring (one thread), for the TCP workloads and
    /// its binary size only.
    Monoio,
    /// embassy's executor on the host (platform-std, one thread), for the CPU workloads it can
    /// run: its tasks live in static pools, so nothing is spawned and joined by the thousand.
    Embassy,
}

impl RuntimeKind {
    pub(crate) const ALL: [Self; 6] = [
        Self::TokioMt,
        Self::TokioCt,
        Self::Smol,
        Self::AsyncStd,
        Self::Monoio,
        Self::Embassy,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::TokioMt => "tokio-mt",
            Self::TokioCt => "tokio-ct",
            Self::Smol => "smol",
            Self::AsyncStd => "async-std",
            Self::Monoio => "monoio",
            Self::Embassy => "embassy",
        }
    }

    /// The label shown in reports.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::AsyncStd => "async-std (discontinued)",
            Self::Monoio => "monoio (io_uring, TCP only)",
            Self::Embassy => "embassy (host, CPU only)",
            other => other.name(),
        }
    }

    /// Worker threads it runs with when `requested` (at least 1, as `--threads` enforces)
    /// are asked for.
    pub(crate) fn threads(self, requested: usize) -> usize {
        match self {
            Self::TokioCt | Self::Monoio | Self::Embassy => 1,
            Self::TokioMt | Self::Smol | Self::AsyncStd => requested,
        }
    }

    /// Whether the suite runs `workload` at size `n` on this runtime (and if not, why not).
    pub(crate) fn runs(self, workload: Workload, n: u64) -> Result<(), &'static str> {
        // Probed only for monoio: it builds an io_uring instance.
        let io_uring = self == Self::Monoio && io_uring_available();
        self.runs_given(workload, n, io_uring)
    }

    /// [`runs`](Self::runs), given whether io_uring is available here.
    fn runs_given(self, workload: Workload, n: u64, io_uring: bool) -> Result<(), &'static str> {
        use Workload as W;
        match self {
            // One tokio binary serves both of its schedulers.
            Self::TokioCt if workload == W::BinarySize => Err("tokio-mt's binary is the same"),
            Self::TokioMt | Self::TokioCt | Self::Smol | Self::AsyncStd => Ok(()),
            Self::Monoio => match workload {
                // The size row runs the minimal program too, and monoio's builds its io_uring
                // driver: without io_uring it would fail, not measure.
                W::BinarySize | W::TcpEchoThroughput | W::TcpEchoLatency if !io_uring => Err(
                    "monoio needs io_uring, which this kernel or its sandbox refuses (kernel.io_uring_disabled, seccomp): its TCP and binary-size rows are skipped",
                ),
                W::BinarySize | W::TcpEchoThroughput | W::TcpEchoLatency => Ok(()),
                _ => Err(
                    "monoio runs the TCP workloads and its binary size only (thread-per-core, !Send tasks)",
                ),
            },
            Self::Embassy => match workload {
                W::Yield
                | W::PingPong
                | W::ChannelSpscNative
                | W::ChannelSpscAsyncChannel
                | W::BinarySize => Ok(()),
                W::Timer100us | W::Timer1ms | W::Timer10ms if n <= 1 => Ok(()),
                _ => Err(
                    "embassy on the host runs yield, ping-pong, SPSC channels and single timers only (static task pools: no spawn-and-join, no 10k timers; no network stack on std)",
                ),
            },
        }
    }
}

/// Whether an io_uring instance can be created here (probed once per process).
fn io_uring_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_os = "linux")]
        {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .build()
                .is_ok()
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    })
}

/// A started runtime, driven by its own threads (tokio-ct by one): the workload's root future
/// is spawned onto it and awaited from outside, so "local" spawns really are local on every
/// runtime and "remote" ones come from a thread that is not the runtime's.
pub(crate) struct Rt {
    kind: RuntimeKind,
    inner: Inner,
}

enum Inner {
    Tokio(tokio::runtime::Runtime),
    /// The current-thread runtime lives on its own thread, inside `block_on` until stopped:
    /// it runs what is spawned onto it, like the other runtimes' workers.
    TokioCt {
        handle: tokio::runtime::Handle,
        stop: Option<async_channel::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Smol {
        executor: Arc<smol::Executor<'static>>,
        stop: Option<async_channel::Sender<()>>,
        threads: Vec<std::thread::JoinHandle<()>>,
    },
    AsyncStd,
    /// Nothing runs until a workload starts its own server thread.
    Monoio,
    Embassy(crate::workloads::embassy::Host),
}

/// A task handle of any runtime: a future of the task's output (a panic resumes).
pub(crate) enum Task<T> {
    Tokio(tokio::task::JoinHandle<T>),
    Smol(smol::Task<T>),
    AsyncStd(async_std::task::JoinHandle<T>),
}

impl<T> Future for Task<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.get_mut() {
            Self::Tokio(handle) => Pin::new(handle).poll(cx).map(|joined| match joined {
                Ok(value) => value,
                Err(error) => std::panic::resume_unwind(error.into_panic()),
            }),
            Self::Smol(task) => Pin::new(task).poll(cx),
            Self::AsyncStd(handle) => Pin::new(handle).poll(cx),
        }
    }
}

impl Rt {
    /// Starts `kind` with `threads` worker threads (see [`RuntimeKind::threads`]). For
    /// async-std the count comes from `ASYNC_STD_THREAD_COUNT`, which the parent sets.
    pub(crate) fn start(kind: RuntimeKind, threads: usize) -> anyhow::Result<Self> {
        let threads = kind.threads(threads);
        let inner = match kind {
            RuntimeKind::TokioMt => Inner::Tokio(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .enable_all()
                    .build()?,
            ),
            RuntimeKind::TokioCt => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let handle = runtime.handle().clone();
                let (stop, stopped) = async_channel::bounded::<()>(1);
                let thread = std::thread::Builder::new()
                    .name("tokio-ct".to_owned())
                    .spawn(move || {
                        let _ = runtime.block_on(stopped.recv());
                    })?;
                Inner::TokioCt {
                    handle,
                    stop: Some(stop),
                    thread: Some(thread),
                }
            }
            RuntimeKind::Smol => {
                let executor = Arc::new(smol::Executor::new());
                let (stop, stopped) = async_channel::bounded::<()>(1);
                let threads = (0..threads)
                    .map(|i| {
                        let (executor, stopped) = (Arc::clone(&executor), stopped.clone());
                        std::thread::Builder::new()
                            .name(format!("smol-{i}"))
                            .spawn(move || {
                                let _ = smol::block_on(executor.run(stopped.recv()));
                            })
                    })
                    .collect::<Result<_, _>>()?;
                Inner::Smol {
                    executor,
                    stop: Some(stop),
                    threads,
                }
            }
            RuntimeKind::AsyncStd => Inner::AsyncStd,
            RuntimeKind::Monoio => Inner::Monoio,
            RuntimeKind::Embassy => Inner::Embassy(crate::workloads::embassy::Host::start()?),
        };
        Ok(Self { kind, inner })
    }

    pub(crate) fn kind(&self) -> RuntimeKind {
        self.kind
    }

    /// The embassy executor, when this is embassy.
    pub(crate) fn embassy(&self) -> Option<&crate::workloads::embassy::Host> {
        match &self.inner {
            Inner::Embassy(host) => Some(host),
            _ => None,
        }
    }

    /// Whether `spawn`, `run` and `spawner` work (the general-purpose runtimes). The others
    /// run only the workloads [`RuntimeKind::runs`] admits, through their own drivers.
    pub(crate) fn general_purpose(&self) -> bool {
        !matches!(self.inner, Inner::Monoio | Inner::Embassy(_))
    }

    /// Runs `root` on the runtime and waits for it from this (outside) thread.
    pub(crate) fn run<F>(&self, root: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        futures_lite::future::block_on(self.spawn(root))
    }

    /// Spawns `future` onto the runtime; callable from any thread (a remote spawn when called
    /// from outside it).
    pub(crate) fn spawn<F>(&self, future: F) -> Task<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.inner {
            Inner::Tokio(rt) => Task::Tokio(rt.spawn(future)),
            Inner::TokioCt { handle, .. } => Task::Tokio(handle.spawn(future)),
            Inner::Smol { executor, .. } => Task::Smol(executor.spawn(future)),
            Inner::AsyncStd => Task::AsyncStd(async_std::task::spawn(future)),
            Inner::Monoio | Inner::Embassy(_) => not_general_purpose(self.kind),
        }
    }

    /// A spawner usable from inside tasks (a local spawn).
    pub(crate) fn spawner(&self) -> Spawner {
        match &self.inner {
            Inner::Tokio(rt) => Spawner::Tokio(rt.handle().clone()),
            Inner::TokioCt { handle, .. } => Spawner::Tokio(handle.clone()),
            Inner::Smol { executor, .. } => Spawner::Smol(Arc::clone(executor)),
            Inner::AsyncStd => Spawner::AsyncStd,
            Inner::Monoio | Inner::Embassy(_) => not_general_purpose(self.kind),
        }
    }
}

/// `workloads::run` checks [`RuntimeKind::runs`] first, so a workload never reaches a
/// runtime that cannot spawn arbitrary `Send` futures; if one ever did, the child fails its
/// row with this message.
fn not_general_purpose(kind: RuntimeKind) -> ! {
    panic!(
        "{} cannot spawn arbitrary Send futures: this workload should have been refused",
        kind.name()
    )
}

impl Drop for Rt {
    fn drop(&mut self) {
        match &mut self.inner {
            Inner::Smol { stop, threads, .. } => {
                drop(stop.take());
                for thread in threads.drain(..) {
                    let _ = thread.join();
                }
            }
            Inner::TokioCt { stop, thread, .. } => {
                drop(stop.take());
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
            Inner::Tokio(_) | Inner::AsyncStd | Inner::Monoio | Inner::Embassy(_) => {}
        }
    }
}

/// Spawns onto a runtime from inside its tasks.
#[derive(Clone)]
pub(crate) enum Spawner {
    Tokio(tokio::runtime::Handle),
    Smol(Arc<smol::Executor<'static>>),
    AsyncStd,
}

impl Spawner {
    pub(crate) fn spawn<F>(&self, future: F) -> Task<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self {
            Self::Tokio(handle) => Task::Tokio(handle.spawn(future)),
            Self::Smol(executor) => Task::Smol(executor.spawn(future)),
            Self::AsyncStd => Task::AsyncStd(async_std::task::spawn(future)),
        }
    }

    /// Spawns `future` and lets it run on its own (a smol task is cancelled when its handle
    /// is dropped, so dropping a [`Task`] is not the same thing everywhere).
    pub(crate) fn spawn_detached<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self.spawn(future) {
            Task::Smol(task) => task.detach(),
            // tokio and async-std handles detach on drop.
            Task::Tokio(_) | Task::AsyncStd(_) => {}
        }
    }

    /// The runtime's own sleep.
    pub(crate) async fn sleep(&self, duration: std::time::Duration) {
        match self {
            Self::Tokio(_) => tokio::time::sleep(duration).await,
            Self::Smol(_) => {
                smol::Timer::after(duration).await;
            }
            Self::AsyncStd => async_std::task::sleep(duration).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RuntimeKind;
    use crate::workloads::Workload;

    /// Without io_uring, monoio's binary-size row is skipped like its TCP rows: its minimal
    /// program builds the io_uring driver, so running it would fail the whole suite.
    #[test]
    fn without_io_uring_every_monoio_row_is_skipped() {
        for workload in [
            Workload::BinarySize,
            Workload::TcpEchoThroughput,
            Workload::TcpEchoLatency,
        ] {
            let skipped = RuntimeKind::Monoio.runs_given(workload, 1, false);
            assert!(
                skipped.is_err_and(|why| why.contains("io_uring")),
                "{workload:?}: {skipped:?}"
            );
            assert_eq!(RuntimeKind::Monoio.runs_given(workload, 1, true), Ok(()));
        }
        assert!(
            RuntimeKind::Monoio
                .runs_given(Workload::Yield, 1, true)
                .is_err()
        );
        // The other runtimes do not depend on it.
        assert_eq!(
            RuntimeKind::Smol.runs_given(Workload::BinarySize, 1, false),
            Ok(())
        );
    }
}
