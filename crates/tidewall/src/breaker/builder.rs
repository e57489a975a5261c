//! Builder for [`CircuitBreaker`].

use std::time::Duration;

use tidewall_core::backoff::Backoff;
use tidewall_core::breaker::{BreakerPolicy, BreakerPolicyBuilder, Window};

use super::CircuitBreaker;
use super::events::{Listener, StateChange};
use super::shared::{Setup, Shared};
use crate::rt::Clock;
use crate::sync::Arc;
use crate::{ConfigError, Name};

/// Configures a [`CircuitBreaker`]. Every policy setter is validated in
/// [`build`](Self::build).
///
/// ```
/// use std::time::Duration;
/// use tidewall::breaker::{CircuitBreaker, Window};
///
/// let breaker = CircuitBreaker::builder()
///     .name("payments")
///     .failure_rate(0.5)
///     .slow_call_rate(0.8, Duration::from_millis(500))
///     .minimum_calls(20)
///     .window(Window::Time { span: Duration::from_secs(10), buckets: 10 })
///     .half_open_probes(3)
///     .on_state_change(|change| eprintln!("{} is now {}", change.name, change.to))
///     .build()?;
/// assert_eq!(breaker.name(), "payments");
/// # Ok::<(), tidewall::ConfigError>(())
/// ```
#[must_use]
#[derive(Clone)]
pub struct CircuitBreakerBuilder<R = crate::rt::DefaultRuntime> {
    policy: BreakerPolicyBuilder,
    rt: R,
    name: Name,
    listener: Option<Listener>,
    events: Option<crate::telemetry::Listener>,
    seed: u64,
    max_open_hint: Duration,
}

impl<R> CircuitBreakerBuilder<R> {
    pub(super) fn new(rt: R) -> Self {
        Self {
            policy: BreakerPolicy::builder(),
            rt,
            name: Name::from_static("breaker"),
            listener: None,
            events: None,
            seed: 0x5eed_b4ea_c0de,
            max_open_hint: crate::retry::DEFAULT_MAX_RETRY_AFTER,
        }
    }

    /// Runs on another runtime (its clock is the one the breaker reads).
    pub fn runtime<R2>(self, rt: R2) -> CircuitBreakerBuilder<R2> {
        CircuitBreakerBuilder {
            policy: self.policy,
            rt,
            name: self.name,
            listener: self.listener,
            events: self.events,
            seed: self.seed,
            max_open_hint: self.max_open_hint,
        }
    }

    /// The longest a failure's hint (a server's `Retry-After`, read by the
    /// [classifier](crate::classify::Classify::retry_after)) may hold the breaker open: a
    /// failure that opens it keeps it open for its break or the hint, whichever is longer,
    /// the hint cut to this (default 60 s; zero ignores hints).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::breaker::{CircuitBreaker, Outcome};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let breaker = CircuitBreaker::builder()
    ///     .consecutive_failures(1)
    ///     .break_duration(Duration::from_secs(1))
    ///     .max_open_hint(Duration::from_secs(30))
    ///     .build()?;
    /// // The server said "come back in 10 s": the breaker stays open that long, not 1 s.
    /// let permit = breaker.try_acquire().expect("closed");
    /// permit.record_hinted(Outcome::Failure, Some(Duration::from_secs(10)));
    /// tokio::time::sleep(Duration::from_secs(5)).await;
    /// assert!(breaker.try_acquire().is_err(), "still open after 5 s");
    /// tokio::time::sleep(Duration::from_secs(5)).await;
    /// assert!(breaker.try_acquire().is_ok(), "a probe after 10 s");
    /// # Ok(()) }
    /// ```
    pub fn max_open_hint(mut self, cap: Duration) -> Self {
        self.max_open_hint = cap;
        self
    }

    /// A name for events and metric labels.
    pub fn name(mut self, name: impl Into<Name>) -> Self {
        self.name = name.into();
        self
    }

    /// Calls `listener` with everything the breaker does: each outcome recorded, each refusal with its reason, each state change. On the caller's
    /// thread, in the call (keep it short). See [`Event`](crate::telemetry::Event).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use tidewall::breaker::CircuitBreaker;
    /// use tidewall::telemetry::EventKind;
    ///
    /// let failures = Arc::new(AtomicU32::new(0));
    /// let counted = Arc::clone(&failures);
    /// let breaker = CircuitBreaker::builder()
    ///     .on_event(move |event| {
    ///         if let EventKind::Failed = event.kind {
    ///             counted.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///     })
    ///     .build()?;
    /// breaker.try_acquire().unwrap().failure();
    /// assert_eq!(failures.load(Ordering::Relaxed), 1);
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn on_event(
        mut self,
        listener: impl Fn(&crate::telemetry::Event<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.events = Some(crate::telemetry::Listener::new(listener));
        self
    }

    /// Called on every state change, on the thread that caused it (keep it short). An
    /// [`on_event`](Self::on_event) listener sees state changes too.
    pub fn on_state_change(
        mut self,
        listener: impl Fn(&StateChange<'_>) + Send + Sync + 'static,
    ) -> Self {
        // A std Arc even under loom: loom's Arc cannot hold an unsized closure.
        self.listener = Some(std::sync::Arc::new(listener));
        self
    }

    /// Seeds the jitter of a [`break_backoff`](Self::break_backoff).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// See [`BreakerPolicyBuilder::failure_rate`].
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.policy = self.policy.failure_rate(rate);
        self
    }

    /// See [`BreakerPolicyBuilder::no_failure_rate`].
    pub fn no_failure_rate(mut self) -> Self {
        self.policy = self.policy.no_failure_rate();
        self
    }

    /// See [`BreakerPolicyBuilder::slow_call_rate`].
    pub fn slow_call_rate(mut self, rate: f64, threshold: Duration) -> Self {
        self.policy = self.policy.slow_call_rate(rate, threshold);
        self
    }

    /// See [`BreakerPolicyBuilder::consecutive_failures`].
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.policy = self.policy.consecutive_failures(n);
        self
    }

    /// See [`BreakerPolicyBuilder::minimum_calls`].
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.policy = self.policy.minimum_calls(n);
        self
    }

    /// See [`BreakerPolicyBuilder::window`].
    pub fn window(mut self, window: Window) -> Self {
        self.policy = self.policy.window(window);
        self
    }

    /// See [`BreakerPolicyBuilder::break_duration`].
    pub fn break_duration(mut self, duration: Duration) -> Self {
        self.policy = self.policy.break_duration(duration);
        self
    }

    /// See [`BreakerPolicyBuilder::break_backoff`].
    pub fn break_backoff(mut self, backoff: Backoff) -> Self {
        self.policy = self.policy.break_backoff(backoff);
        self
    }

    /// See [`BreakerPolicyBuilder::half_open_probes`].
    pub fn half_open_probes(mut self, n: u32) -> Self {
        self.policy = self.policy.half_open_probes(n);
        self
    }

    /// See [`BreakerPolicyBuilder::max_half_open_wait`].
    pub fn max_half_open_wait(mut self, wait: Option<Duration>) -> Self {
        self.policy = self.policy.max_half_open_wait(wait);
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of [`BreakerPolicyBuilder::build`];
    /// [`ConfigError::DurationOverflow`] for a `max_open_hint` above `u64::MAX` nanoseconds.
    pub fn build(self) -> Result<CircuitBreaker<R>, ConfigError>
    where
        R: Clock,
    {
        let (policy, setup) = self.validate()?;
        Ok(CircuitBreaker {
            shared: Arc::new(Shared::new(std::sync::Arc::new(policy), setup)),
        })
    }

    /// Builds a breaker per key instead, each with these settings: see
    /// [`KeyedCircuitBreaker`](super::KeyedCircuitBreaker).
    pub fn keyed<K>(self) -> super::KeyedCircuitBreakerBuilder<K, R> {
        super::KeyedCircuitBreakerBuilder::new(self)
    }

    /// The validated policy and hint cap: all that [`CircuitBreaker::reconfigure`] applies.
    pub(super) fn checked_policy(&self) -> Result<(BreakerPolicy, Duration), ConfigError> {
        let policy = self.policy.clone().build()?;
        if u64::try_from(self.max_open_hint.as_nanos()).is_err() {
            return Err(ConfigError::DurationOverflow {
                field: "max_open_hint",
            });
        }
        Ok((policy, self.max_open_hint))
    }

    /// The validated policy and how to make a breaker of it.
    pub(super) fn validate(self) -> Result<(BreakerPolicy, Setup<R>), ConfigError> {
        let (policy, _) = self.checked_policy()?;
        let setup = Setup {
            rt: self.rt,
            name: self.name.clone(),
            listener: self.listener,
            seed: self.seed,
            max_open_hint: self.max_open_hint,
            key_label: None,
            telemetry: crate::telemetry::PolicyTelemetry::new(
                "breaker",
                &self.name,
                &[crate::Rejected::CircuitOpen {
                    retry_after: Duration::ZERO,
                }],
            )
            .with_outcomes()
            .with_transitions()
            .with_listener(self.events.clone())
            .shared(),
        };
        Ok((policy, setup))
    }
}
