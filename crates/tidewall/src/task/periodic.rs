//! Periodic work that stops on cancellation, and a health checker built on it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{FutureExt as _, StreamExt};

use super::cancel::{CancellationToken, Reason};
use super::wakers::{HeldSlot, WakerSlots};
use crate::ConfigError;
use crate::rt::{DefaultRuntime, Panic, Runtime};
use crate::stream::{MissedTicks, interval_on};
use crate::time::FutureExt as _;

/// Runs `work(tick)` every `period` until `token` is cancelled; returns the reason.
///
/// The schedule starts when the returned future is first polled: the first run is one period
/// later, and runs follow `start + k × period` (`tick` is the run's scheduled instant). Each
/// run is awaited before the next tick is considered, so runs never overlap. A run that
/// overruns one or more ticks is handled by `missed` (see [`MissedTicks`]):
///
/// * `Skip`: the next run starts at once, late, for the earliest tick it overran; the other
///   overrun ticks are dropped, and runs return to the original schedule at its first point
///   after the late run started. An overrun of any length behaves so, from one period to
///   centuries.
/// * `Burst`: one run per overrun tick, back to back, until the schedule is caught up.
/// * `Delay`: the next run starts at once and the schedule restarts from it.
///
/// The token is checked before every poll of a run (see
/// [`CancellationToken::run_until_cancelled`]), so a run is stopped mid-way, not only
/// between runs. A run that panics is not caught: the panic leaves this future and the
/// schedule ends (spawned, its task reports the panic; supervised, it is a crashed child).
///
/// **Cancel safety:** dropping the future drops the run in progress.
///
/// ```
/// use std::time::Duration;
/// use tidewall::rt::Tokio;
/// use tidewall::stream::MissedTicks;
/// use tidewall::task::{CancellationToken, periodic};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tidewall::ConfigError> {
/// let token = CancellationToken::new();
/// let stop = token.clone();
/// let mut runs = 0;
/// let reason = periodic(Tokio, Duration::from_secs(1), MissedTicks::Skip, &token, |_tick| {
///     runs += 1;
///     if runs == 3 {
///         stop.cancel("three is enough");
///     }
///     async {}
/// })?
/// .await;
/// assert_eq!((runs, reason.as_str()), (3, "three is enough"));
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`ConfigError::Zero`] for a zero period; [`ConfigError::DurationOverflow`] for one beyond
/// `u64::MAX` nanoseconds.
pub fn periodic<'a, R, F, Fut>(
    rt: R,
    period: Duration,
    missed: MissedTicks,
    token: &'a CancellationToken,
    mut work: F,
) -> Result<impl Future<Output = Reason> + 'a, ConfigError>
where
    R: Runtime,
    F: FnMut(Instant) -> Fut + 'a,
    Fut: Future<Output = ()> + 'a,
{
    let ticks = interval_on(&rt, period, missed)?;
    Ok(async move {
        let mut ticks = std::pin::pin!(ticks.restarted());
        loop {
            let tick = match token.run_until_cancelled(ticks.next()).await {
                Ok(Some(tick)) => tick,
                Ok(None) => return Reason::new("interval ended"),
                Err(reason) => return reason,
            };
            if let Err(reason) = token.run_until_cancelled(work(tick)).await {
                return reason;
            }
        }
    })
}

/// The latest verdict of a [`HealthChecker`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// No probe has finished yet.
    Unknown,
    /// The last probe succeeded.
    Healthy,
    /// The last probe failed, with its message (`probe panicked: ...` for a probe that
    /// panicked, when called or while it ran: then its panic's message, or `(its payload is
    /// not a string)`).
    Unhealthy(String),
    /// The last probe did not answer within the timeout.
    TimedOut,
}

#[derive(Debug)]
struct Published {
    health: Health,
    version: u64,
    checked_at: Option<Instant>,
    waiters: WakerSlots,
}

/// A watch-style handle on the latest health: read it at any time, or wait for it to change.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct HealthHandle {
    shared: Arc<Mutex<Published>>,
}

impl HealthHandle {
    /// The latest health and when it was measured.
    pub fn latest(&self) -> (Health, Option<Instant>) {
        let published = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        (published.health.clone(), published.checked_at)
    }

    /// Waits until the health differs from `seen` (pass [`Health::Unknown`] to wait for the
    /// first verdict), and returns the new one.
    ///
    /// **Cancel safety:** dropping the future loses nothing, and leaves nothing behind: the
    /// handle holds one waker per future waiting now, however many waits were abandoned.
    pub async fn changed(&self, seen: &Health) -> Health {
        // Freed when this future resolves or is dropped.
        let mut slot = HeldSlot::new(|key: &mut Option<usize>| {
            let mut published = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            published.waiters.free(key);
        });
        std::future::poll_fn(|cx: &mut Context<'_>| {
            let mut published = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            if published.health != *seen {
                published.waiters.free(&mut slot.key);
                return Poll::Ready(published.health.clone());
            }
            published.waiters.register(&mut slot.key, cx.waker());
            Poll::Pending
        })
        .await
    }

    fn publish(&self, health: Health, at: Instant) {
        let waiters = {
            let mut published = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            published.version += 1;
            published.checked_at = Some(at);
            if published.health == health {
                return;
            }
            published.health = health;
            published.waiters.take_all()
        };
        for waker in waiters {
            waker.wake();
        }
    }
}

/// Probes something every period, each probe bounded by a timeout, and publishes the latest
/// [`Health`] through a [`HealthHandle`].
///
/// **Schedule:** the first probe starts as soon as the checker's future is first polled, so a
/// verdict arrives without waiting a period; later probes start at `first + k × period`.
/// Probes never overlap: a probe that overruns ticks (it can, when the timeout is longer than
/// the period) is followed at once by one late probe, and the other overrun ticks are dropped
/// ([`MissedTicks::Skip`]), for an overrun of any length. Each finished probe publishes its
/// verdict with the instant it finished ([`HealthHandle::latest`]).
#[derive(Debug)]
pub struct HealthChecker;

impl HealthChecker {
    /// Configures a checker: by default a probe every 10 s, each bounded by 1 s (the defaults
    /// of a Kubernetes probe), on the default runtime.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::rt::{Clock, Tokio};
    /// use tidewall::task::{CancellationToken, Health, HealthChecker};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let token = CancellationToken::new();
    /// let (health, checker) = HealthChecker::builder()
    ///     .period(Duration::from_secs(5))
    ///     .timeout(Duration::from_secs(1))
    ///     .start(&token, || async {
    ///         Ok::<(), String>(()) // e.g. `SELECT 1`
    ///     })?;
    /// let started = Tokio.now();
    /// let run = tokio::spawn(async move { checker.await });
    /// assert_eq!(health.changed(&Health::Unknown).await, Health::Healthy);
    /// // The first probe ran at once, not one period (5 s) later.
    /// assert_eq!(health.latest(), (Health::Healthy, Some(started)));
    /// token.cancel("bye");
    /// assert_eq!(run.await.unwrap().as_str(), "bye");
    /// # Ok(()) }
    /// ```
    pub fn builder() -> HealthCheckerBuilder {
        HealthCheckerBuilder {
            rt: DefaultRuntime::default(),
            period: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
        }
    }
}

/// Configures a [`HealthChecker`]; see [`HealthChecker::builder`].
#[must_use]
#[derive(Debug, Clone)]
pub struct HealthCheckerBuilder<R = DefaultRuntime> {
    rt: R,
    period: Duration,
    timeout: Duration,
}

impl<R> HealthCheckerBuilder<R> {
    /// How often to probe (default 10 s).
    pub fn period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// How long one probe may take before it counts as [`Health::TimedOut`] (default 1 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the probes on `rt`.
    pub fn runtime<R2: Runtime>(self, rt: R2) -> HealthCheckerBuilder<R2> {
        HealthCheckerBuilder {
            rt,
            period: self.period,
            timeout: self.timeout,
        }
    }
}

impl<R: Runtime> HealthCheckerBuilder<R> {
    /// Returns the handle and the checker's future (run it, e.g. spawn it); it probes at once
    /// when first polled, then every period (see [`HealthChecker`]), until `token` is
    /// cancelled, and then returns the reason.
    ///
    /// **Cancel safety:** dropping the checker's future drops the probe in progress; the
    /// handle keeps the last published verdict.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero period or timeout; [`ConfigError::DurationOverflow`]
    /// for either beyond `u64::MAX` nanoseconds.
    pub fn start<P, Fut, E>(
        self,
        token: &CancellationToken,
        mut probe: P,
    ) -> Result<(HealthHandle, impl Future<Output = Reason> + Send + 'static), ConfigError>
    where
        P: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let Self {
            rt,
            period,
            timeout,
        } = self;
        crate::time::positive_duration("timeout", timeout)?;
        let handle = HealthHandle {
            shared: Arc::new(Mutex::new(Published {
                health: Health::Unknown,
                version: 0,
                checked_at: None,
                waiters: WakerSlots::default(),
            })),
        };
        let token = token.clone();
        let publisher = handle.clone();
        let ticks = interval_on(&rt, period, MissedTicks::Skip)?;
        let run = async move {
            let mut ticks = std::pin::pin!(ticks.restarted());
            loop {
                // Called inside the caught future: a probe that panics, when called or when
                // polled, is a failed probe, and the checker goes on.
                let probed = AssertUnwindSafe(async { probe().await }).catch_unwind();
                let outcome = match token
                    .run_until_cancelled(probed.timeout_on(&rt, timeout))
                    .await
                {
                    Err(reason) => return reason,
                    Ok(Err(_)) => Health::TimedOut,
                    Ok(Ok(Err(panic))) => Health::Unhealthy(format!(
                        "probe panicked: {}",
                        Panic::new(panic)
                            .message()
                            .unwrap_or("(its payload is not a string)")
                    )),
                    Ok(Ok(Ok(Err(e)))) => Health::Unhealthy(e.to_string()),
                    Ok(Ok(Ok(Ok(())))) => Health::Healthy,
                };
                publisher.publish(outcome, rt.now());
                match token.run_until_cancelled(ticks.next()).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Reason::new("interval ended"),
                    Err(reason) => return reason,
                }
            }
        };
        Ok((handle, run))
    }
}
