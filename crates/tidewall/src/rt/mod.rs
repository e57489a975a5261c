//! The runtime seam: the traits through which every Tidewall pattern waits and spawns.
//!
//! Patterns never call `tokio::time::sleep` or `smol::spawn` directly. Policies that only wait
//! are generic over a [`Clock`] ([`Clock::now`], [`Clock::sleep_until`]); task patterns over a
//! [`Runtime`], which is a clock plus [`Spawn`] ([`Spawn::spawn`], [`Spawn::spawn_blocking`]);
//! listening for shutdown signals is the opt-in [`Signals`]. Dispatch is static: the runtime
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
//! use tidewall::rt::{Clock, JoinError, Spawn, TaskHandle, Tokio};
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
pub(crate) mod caught;
mod join;
mod signal;
#[cfg(feature = "smol")]
mod smol;
#[cfg(feature = "tokio")]
mod tokio;

use std::future::Future;
use std::task::Poll;
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
pub type JoinHandle<R, T> = <R as Spawn>::JoinHandle<T>;

/// Time, as every policy that waits needs it: the current instant and a timer.
///
/// Policies that only wait (retry, deadlines, breakers, bulkheads, rate limiters, hedging,
/// pipelines, tower layers) are generic over a `Clock`, so anything that tells the time drives
/// them: a [`Runtime`] adapter, a [`FakeClock`](crate::testing::FakeClock), or a user's own.
/// Implementations must be cheap to clone (a unit struct or an `Arc`).
///
/// # Contract
///
/// * `now` is monotonic and agrees with `sleep_until`: after `sleep_until(t)` completes,
///   `now() >= t`.
/// * Dropping a [`Clock::Sleep`] cancels it; it holds no other resource.
///
/// ```
/// use std::time::{Duration, Instant};
/// use tidewall::rt::Clock;
///
/// /// A clock that is always at one instant and whose timers fire at once.
/// #[derive(Clone)]
/// struct Frozen(Instant);
///
/// impl Clock for Frozen {
///     type Sleep = std::future::Ready<()>;
///     fn now(&self) -> Instant {
///         self.0
///     }
///     fn sleep_until(&self, _: Instant) -> Self::Sleep {
///         std::future::ready(())
///     }
/// }
///
/// let clock = Frozen(Instant::now());
/// assert_eq!(clock.now(), clock.now());
/// assert!(!clock.is_real_time(), "a user's clock is never taken for real time");
/// ```
pub trait Clock: Clone + Send + Sync + 'static {
    /// The future returned by [`Clock::sleep_until`].
    type Sleep: Future<Output = ()> + Send + 'static;

    /// The current time on this clock (virtual under paused tokio time or a
    /// [`FakeClock`](crate::testing::FakeClock)).
    fn now(&self) -> Instant;

    /// Completes at `deadline` (at once if it has passed). On [`Tokio`] in real time, timers
    /// fire on whole milliseconds: at the driver's first millisecond tick at or after
    /// `deadline`, which for a deadline that has just passed can be up to a millisecond later.
    fn sleep_until(&self, deadline: Instant) -> Self::Sleep;

    /// Completes after `duration`. A duration too large to add to the clock sleeps "forever"
    /// (about 30 years) instead of overflowing: sooner than a long duration that does fit (a
    /// century, say), so "forever" is not the longest sleep.
    fn sleep(&self, duration: Duration) -> Self::Sleep {
        self.sleep_until(instant_after(self.now(), duration))
    }

    /// Whether [`now`](Self::now) is, right now, the machine's monotonic clock, so that a hot
    /// path that only measures durations may read the CPU's timestamp counter instead (with
    /// the default `quanta` feature, as the rate limiter does). `false` unless an
    /// implementation says otherwise; the runtime adapters say `true` unless their time is
    /// paused.
    fn is_real_time(&self) -> bool {
        false
    }
}

/// Task spawning, as the task patterns need it (scopes, supervisors, pools, fan-out).
///
/// # Contract
///
/// A handle from `spawn`/`spawn_blocking` reports panics as [`JoinError::Panicked`] and
/// aborted or runtime-cancelled tasks as [`JoinError::Cancelled`]; dropping it detaches.
///
/// A panic while the task's future is dropped is the task's panic, as on tokio: a future that
/// panics in `Drop` after it returned, or when it is dropped by an abort, makes the handle
/// report `Panicked` with that payload. One case differs: a `Smol` task dropped
/// unfinished because its executor was dropped reports `Cancelled` whatever its drop does
/// (the panic is caught and ignored). A panic while dropping the output of a detached task
/// is caught and ignored; so is one while dropping the handle of a finished task.
pub trait Spawn: Clone + Send + Sync + 'static {
    /// The handle of a spawned task.
    type JoinHandle<T: Send + 'static>: TaskHandle<T>;

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
}

/// A clock and task spawning: what the task patterns need, and what every adapter in this
/// module is. Implemented for every type that is both a [`Clock`] and a [`Spawn`]; implement
/// those two to run Tidewall on another executor (the adapters here are small and show the
/// contract).
pub trait Runtime: Clock + Spawn {}

impl<T: Clock + Spawn> Runtime for T {}

/// Listening for shutdown signals: opt-in, for the runtimes that can
/// ([`Shutdown::listen_for_signals`](crate::task::shutdown::Shutdown::listen_for_signals) and the CLI use it).
pub trait Signals {
    /// Starts listening for SIGINT and SIGTERM (Ctrl-C only off Unix). The handlers are in
    /// place when this returns, so a signal sent afterwards is never lost and no longer
    /// terminates the process; the returned future completes at the first one. One
    /// exception: off Unix, [`Tokio`] installs its Ctrl-C handler when the future is first
    /// polled, so poll it (spawn it) soon.
    ///
    /// # Errors
    ///
    /// The OS error if a handler cannot be installed. On [`Tokio`] outside a runtime with its
    /// I/O driver, an error of kind `Other`: tokio panics there, and the panic is caught (the
    /// panic hook still reports it; under `panic = "abort"` the process aborts).
    fn shutdown_signals(&self) -> std::io::Result<ShutdownSignals>;
}

/// `now + duration` exactly when it fits the clock; when it does not, roughly thirty years
/// from now ("forever", as tokio's far future) instead of panicking, and on a clock within
/// thirty years of the end of its range, the latest instant it can hold: never earlier than
/// either.
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
    now.checked_add(duration)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or_else(|| latest_after(now, FAR_FUTURE))
}

/// The latest instant the clock can hold, found from `now` by steps that halve each time one
/// overflows (at most about 120 additions: only a clock at the end of its range gets here).
#[cold]
fn latest_after(now: Instant, mut step: Duration) -> Instant {
    let mut latest = now;
    while !step.is_zero() {
        match latest.checked_add(step) {
            Some(later) => latest = later,
            None => step /= 2,
        }
    }
    latest
}

/// Pending once, woken at once: lets the executor run other tasks (and timers) before the
/// caller goes on, on any runtime.
pub(crate) async fn yield_now() {
    let mut yielded = false;
    core::future::poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::instant_after;

    #[test]
    fn near_the_end_of_the_clock_forever_is_its_last_instant_not_now() {
        let now = Instant::now();
        // The latest instant this platform's clock holds, found by the same doubling search
        // a user's clock near its end would need.
        let mut end = now;
        let mut step = Duration::from_secs(u64::MAX);
        while !step.is_zero() {
            match end.checked_add(step) {
                Some(later) => end = later,
                None => step /= 2,
            }
        }
        for before_end in [
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(86_400 * 365 * 2),
        ] {
            let at = end - before_end;
            assert_eq!(
                instant_after(at, Duration::MAX),
                end,
                "{before_end:?} before the end"
            );
            assert_eq!(instant_after(at, before_end), end);
        }
    }
}
