//! The runtime seam: the one trait through which every Tidewall policy waits and spawns.
//!
//! Policies never call `tokio::time::sleep` or `smol::spawn` directly. They are generic over a
//! [`Runtime`], which supplies a clock ([`Runtime::now`], [`Runtime::sleep_until`]) and task
//! spawning ([`Runtime::spawn`], [`Runtime::spawn_blocking`]). Dispatch is static: the runtime
//! is a type parameter (defaulting to [`Tokio`] when the `tokio` feature is on), so there is no
//! boxing and no virtual call on a hot path.
//!
//! | adapter | feature | notes |
//! |---|---|---|
//! | [`Tokio`] | `tokio` (default) | whichever tokio runtime is current: multi-thread or current-thread |
//! | [`Smol`] | `smol` | an explicit `smol::Executor`; [`SmolRuntime`] owns one with a stated thread count |
//! | [`AsyncStd`] | `async-std` | **legacy**: async-std is discontinued upstream; kept for existing code bases |
//! | [`testing::Clocked`](crate::testing::Clocked) | `test-util` | any of the above with virtual time |
//!
//! Every adapter's [`JoinHandle`] resolves to `Result<T, JoinError>`, and a panic or an abort is
//! reported the same way on all of them: [`JoinError::Panicked`] with the payload, or
//! [`JoinError::Cancelled`]. Dropping a handle detaches the task (it keeps running), as in tokio.
//!
//! ```
//! # #[cfg(feature = "tokio")] {
//! use std::time::Duration;
//! use tidewall::rt::{JoinError, Runtime, TaskHandle, Tokio};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
//! let rt = Tokio;
//! let start = rt.now();
//! rt.sleep(Duration::from_millis(10)).await;
//! assert!(rt.now() - start >= Duration::from_millis(10));
//!
//! let answer = rt.spawn(async { 6 * 7 });
//! assert_eq!(answer.await.unwrap(), 42);
//!
//! let crash = rt.spawn(async { panic!("boom") });
//! assert!(matches!(crash.await, Err(JoinError::Panicked(p)) if p.message() == Some("boom")));
//!
//! let stuck = rt.spawn(std::future::pending::<()>());
//! stuck.abort();
//! assert!(matches!(stuck.await, Err(JoinError::Cancelled)));
//! # });
//! # }
//! ```

#[cfg(feature = "async-std")]
mod async_std;
#[cfg(any(feature = "smol", feature = "async-std"))]
mod catching;
mod join;
mod signal;
#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;

use std::future::Future;
use std::time::{Duration, Instant};

#[cfg(feature = "async-std")]
pub use self::async_std::AsyncStd;
#[cfg(feature = "smol")]
pub use self::smol::{Smol, SmolRuntime};
#[cfg(feature = "tokio")]
pub use self::tokio::Tokio;
pub use join::{JoinError, Panic, TaskHandle};
pub use signal::{ShutdownSignals, Signal};

/// The runtime Tidewall types use when none is named: [`Tokio`] with the `tokio` feature.
#[cfg(feature = "tokio")]
pub type DefaultRuntime = Tokio;

/// Without the `tokio` feature there is no default runtime: this placeholder implements
/// nothing, so a type left on its default fails to compile and asks for `.runtime(..)`.
#[cfg(not(feature = "tokio"))]
pub type DefaultRuntime = NoDefaultRuntime;

/// See [`DefaultRuntime`]: the placeholder used when the `tokio` feature is off.
#[cfg(not(feature = "tokio"))]
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDefaultRuntime;

/// The join handle type of runtime `R` for a task returning `T`.
pub type JoinHandle<R, T> = <R as Runtime>::JoinHandle<T>;

/// Time and tasks, as every Tidewall pattern needs them.
///
/// Implement it to run Tidewall on another executor: the adapters in this module are small and
/// show the contract. Implementations must be cheap to clone (a unit struct or an `Arc`).
///
/// # Contract
///
/// * `now` is monotonic and agrees with `sleep_until`: after `sleep_until(t)` completes,
///   `now() >= t`.
/// * Dropping a [`Runtime::Sleep`] cancels it; it holds no other resource.
/// * A handle from `spawn`/`spawn_blocking` reports panics as [`JoinError::Panicked`] and
///   aborted or runtime-cancelled tasks as [`JoinError::Cancelled`]; dropping it detaches.
pub trait Runtime: Clone + Send + Sync + 'static {
    /// The future returned by [`Runtime::sleep_until`].
    type Sleep: Future<Output = ()> + Send + 'static;
    /// The handle of a spawned task.
    type JoinHandle<T: Send + 'static>: TaskHandle<T>;

    /// The current time on this runtime's clock (virtual under paused tokio time or a
    /// [`FakeClock`](crate::testing::FakeClock)).
    fn now(&self) -> Instant;

    /// Completes at `deadline` (at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> Self::Sleep;

    /// Completes after `duration`. A duration too large to add to the clock sleeps "forever"
    /// (about 30 years) instead of overflowing.
    fn sleep(&self, duration: Duration) -> Self::Sleep {
        self.sleep_until(instant_after(self.now(), duration))
    }

    /// Runs `future` as an independent task.
    fn spawn<F>(&self, future: F) -> Self::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static;

    /// Runs blocking `work` on a thread where blocking is allowed. Aborting the handle cannot
    /// stop `work` once it has started (threads cannot be interrupted): use a cooperative flag.
    fn spawn_blocking<W, T>(&self, work: W) -> Self::JoinHandle<T>
    where
        W: FnOnce() -> T + Send + 'static,
        T: Send + 'static;

    /// Starts listening for SIGINT and SIGTERM (Ctrl-C only off Unix). The handlers are in
    /// place when this returns, so a signal sent afterwards is never lost and no longer
    /// terminates the process; the returned future completes at the first one.
    ///
    /// # Errors
    ///
    /// The OS error if a handler cannot be installed, or [`std::io::ErrorKind::Unsupported`]
    /// from an adapter that does not override this (the default).
    fn shutdown_signals(&self) -> std::io::Result<ShutdownSignals> {
        Err(signal::unsupported())
    }
}

/// `now + duration` exactly when it fits the clock; when it does not, roughly thirty years
/// from now ("forever", as tokio's far future) instead of panicking.
///
/// ```
/// use std::time::{Duration, Instant};
/// use tidewall::rt::instant_after;
///
/// let now = Instant::now();
/// let century = Duration::from_secs(100 * 365 * 86_400);
/// assert_eq!(instant_after(now, century), now + century);
/// assert!(instant_after(now, Duration::MAX) > now + Duration::from_secs(29 * 365 * 86_400));
/// ```
pub fn instant_after(now: Instant, duration: Duration) -> Instant {
    const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);
    // If even the far future overflows, the clock itself is at its end: `now` is all there is.
    now.checked_add(duration)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}
