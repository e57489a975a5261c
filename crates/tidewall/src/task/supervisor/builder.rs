//! Configuring a supervisor: strategy, intensity, restart backoff, children.

use std::sync::Arc;
use std::time::Duration;

use tidewall_core::backoff::{Backoff, Jitter};

use super::report::SupervisorEvent;
use super::run::Supervisor;
use super::spec::ChildSpec;
use crate::ConfigError;
use crate::rt::{DefaultRuntime, Runtime};

/// Which children a restart takes with it (OTP's strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Only the child that ended is restarted.
    #[default]
    OneForOne,
    /// Every child is stopped (in reverse of the order added) and all are restarted in order:
    /// for children that cannot work without each other.
    OneForAll,
    /// The child and every child started after it are stopped and restarted: for children
    /// that depend on the ones before them.
    RestForOne,
}

pub(super) type EventHook = Arc<dyn Fn(&SupervisorEvent) + Send + Sync>;

/// Configures a [`Supervisor`]: [`SupervisorBuilder::new`] (or `Supervisor::builder()` with
/// the `tokio` feature).
#[must_use]
pub struct SupervisorBuilder<R = DefaultRuntime> {
    pub(super) rt: R,
    pub(super) strategy: Strategy,
    pub(super) max_restarts: u32,
    pub(super) period: Duration,
    pub(super) backoff: Option<Backoff>,
    pub(super) stable_after: Option<Duration>,
    pub(super) seed: Option<u64>,
    pub(super) children: Vec<ChildSpec>,
    pub(super) on_event: Option<EventHook>,
}

impl Default for SupervisorBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl<R> std::fmt::Debug for SupervisorBuilder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorBuilder")
            .field("strategy", &self.strategy)
            .field("max_restarts", &self.max_restarts)
            .field("period", &self.period)
            .field("children", &self.children)
            .finish_non_exhaustive()
    }
}

impl SupervisorBuilder {
    /// Starts configuring a supervisor on the default runtime (set another with
    /// [`runtime`](Self::runtime); without the `tokio` feature there is no default and
    /// `build` asks for one). One-for-one, 3 restarts in 5 s, the default backoff.
    pub fn new() -> Self {
        Self {
            rt: DefaultRuntime::default(),
            strategy: Strategy::OneForOne,
            max_restarts: 3,
            period: Duration::from_secs(5),
            backoff: None,
            stable_after: None,
            seed: None,
            children: Vec::new(),
            on_event: None,
        }
    }
}

impl<R> SupervisorBuilder<R> {
    /// Runs the children on `rt` (and times restarts and shutdowns with it).
    pub fn runtime<R2: Runtime>(self, rt: R2) -> SupervisorBuilder<R2> {
        SupervisorBuilder {
            rt,
            strategy: self.strategy,
            max_restarts: self.max_restarts,
            period: self.period,
            backoff: self.backoff,
            stable_after: self.stable_after,
            seed: self.seed,
            children: self.children,
            on_event: self.on_event,
        }
    }

    /// The restart strategy ([`Strategy::OneForOne`] by default).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// At most `max_restarts` restarts within any `period` (3 in 5 s by default); the next
    /// one fails the supervisor, which stops its children and escalates to its parent.
    /// `max_restarts = 0` escalates on the first exit that would restart.
    ///
    /// A restart is dated by the exit that caused it, and the window is closed, as OTP's: an
    /// exit exactly `period` after an earlier restart still counts that restart.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.max_restarts = max_restarts;
        self.period = period;
        self
    }

    /// The delay before each restart of a child (by default exponential from 10 ms, doubling,
    /// capped at 1 s, with equal jitter: uniform in `[d/2, d]`). Restarts are bounded by the
    /// intensity, not the backoff: once a backoff's `max_attempts` (or `max_elapsed`) are
    /// spent, every later restart waits the last delay it gave (its cap, `max_delay`, if it
    /// gave none), as a breaker's break backoff does, until a run lasts
    /// [`stable_after`](Self::stable_after) and the backoff starts afresh.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// A child that ran at least this long before ending starts its backoff afresh (the
    /// intensity period by default). It must be positive: [`build`](Self::build) refuses
    /// zero.
    pub fn stable_after(mut self, stable: Duration) -> Self {
        self.stable_after = Some(stable);
        self
    }

    /// Seeds the backoff jitter (fresh per supervisor by default), for reproducible runs.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Adds a child; children start in the order added and stop in reverse of it (whatever
    /// restarts happened in between, as in OTP).
    pub fn child(mut self, spec: ChildSpec) -> Self {
        self.children.push(spec);
        self
    }

    /// Calls `hook` with every [`SupervisorEvent`], from the supervisor's task, in order.
    /// Keep it short: it runs between the supervisor's steps.
    pub fn on_event(mut self, hook: impl Fn(&SupervisorEvent) + Send + Sync + 'static) -> Self {
        self.on_event = Some(Arc::new(hook));
        self
    }
}

impl<R: Runtime> SupervisorBuilder<R> {
    /// Validates the configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero intensity period (`intensity(0, ZERO)` included), a
    /// zero [`stable_after`](Self::stable_after) or no children;
    /// [`ConfigError::DurationOverflow`] for durations beyond `u64::MAX` nanoseconds;
    /// [`ConfigError::Conflict`] when two children share a name.
    pub fn build(self) -> Result<Supervisor<R>, ConfigError> {
        crate::time::positive_duration("period", self.period)?;
        if let Some(stable) = self.stable_after {
            crate::time::positive_duration("stable_after", stable)?;
        }
        if self.children.is_empty() {
            return Err(ConfigError::Zero { field: "children" });
        }
        for (i, child) in self.children.iter().enumerate() {
            if u64::try_from(child.shutdown_timeout.as_nanos()).is_err() {
                return Err(ConfigError::DurationOverflow {
                    field: "shutdown_timeout",
                });
            }
            if self.children[..i].iter().any(|c| c.name == child.name) {
                return Err(ConfigError::Conflict {
                    reason: "two children share a name",
                });
            }
        }
        let backoff = match self.backoff {
            Some(backoff) => backoff,
            None => Backoff::exponential(Duration::from_millis(10))
                .max_delay(Duration::from_secs(1))
                .jitter(Jitter::Equal)
                .max_attempts(u32::MAX)
                .build()?,
        };
        Ok(Supervisor::from_builder(self, backoff))
    }
}
