//! Shutdown signals (SIGINT, SIGTERM) through the runtime seam.

use std::fmt;
use std::future::Future;
#[cfg(any(feature = "tokio", feature = "smol", feature = "async-std"))]
use std::io;
use std::pin::Pin;

/// A signal that asks the process to shut down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (what `kill`, systemd and Kubernetes send).
    Terminate,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        })
    }
}

/// Completes at the first shutdown signal received after it was created; see
/// [`Signals::shutdown_signals`](super::Signals::shutdown_signals).
pub type ShutdownSignals = Pin<Box<dyn Future<Output = Signal> + Send + 'static>>;

/// Through tokio's signal driver (the runtime needs its I/O driver: `enable_all`).
#[cfg(feature = "tokio")]
pub(super) fn tokio_signals() -> io::Result<ShutdownSignals> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // tokio panics (rather than failing) outside a runtime or on one built without its
        // I/O driver: turn that into an error the caller can handle.
        let install = || -> io::Result<_> {
            Ok((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        };
        let (mut interrupt, mut terminate) =
            std::panic::catch_unwind(install).map_err(|_| {
                io::Error::other("tokio signals need a runtime with its I/O driver (enable_all)")
            })??;
        Ok(Box::pin(async move {
            // `None` means the driver is gone: there will be no signal to report.
            let interrupt = std::pin::pin!(async {
                match interrupt.recv().await {
                    Some(()) => Signal::Interrupt,
                    None => std::future::pending().await,
                }
            });
            let terminate = std::pin::pin!(async {
                match terminate.recv().await {
                    Some(()) => Signal::Terminate,
                    None => std::future::pending().await,
                }
            });
            futures_util::future::select(interrupt, terminate)
                .await
                .factor_first()
                .0
        }))
    }
    #[cfg(not(unix))]
    {
        // Off Unix, tokio installs the Ctrl-C handler when this future is first polled, not
        // when it is created: poll it early.
        Ok(Box::pin(async {
            // Ctrl-C is the only shutdown signal here; an error leaves nothing to wait for.
            match tokio::signal::ctrl_c().await {
                Ok(()) => Signal::Interrupt,
                Err(_) => std::future::pending().await,
            }
        }))
    }
}

/// Through `async-signal` (for the smol and async-std adapters).
#[cfg(any(feature = "smol", feature = "async-std"))]
pub(super) fn portable_signals() -> io::Result<ShutdownSignals> {
    use futures_util::StreamExt as _;
    #[cfg(unix)]
    let mut signals =
        async_signal::Signals::new([async_signal::Signal::Int, async_signal::Signal::Term])?;
    #[cfg(not(unix))]
    let mut signals = async_signal::Signals::new([async_signal::Signal::Int])?;
    Ok(Box::pin(async move {
        loop {
            match signals.next().await {
                Some(Ok(async_signal::Signal::Int)) => return Signal::Interrupt,
                #[cfg(unix)]
                Some(Ok(async_signal::Signal::Term)) => return Signal::Terminate,
                // A signal we did not ask for: keep listening.
                Some(Ok(_)) => {}
                // A read error would repeat for ever (a spin), and an end means no more
                // signals: either way there is nothing more to report.
                Some(Err(_)) | None => std::future::pending::<()>().await,
            }
        }
    }))
}
