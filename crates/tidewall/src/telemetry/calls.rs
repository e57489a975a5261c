//! A front's telemetry for whole calls (the pipeline's): how each ended, how long it took, the
//! retries it made, its listener, and a tracing span around it.

use std::time::Duration;

use super::{EventKind, Listener};
use crate::Rejected;

/// How a whole call ended, as `tidewall_calls_total` labels it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CallOutcome {
    Success,
    Failure,
    Ignored,
    Rejected(Rejected),
    TimedOut,
    Cancelled,
}

impl From<crate::breaker::Outcome> for CallOutcome {
    /// An answer by the verdict its classifier gave it.
    fn from(outcome: crate::breaker::Outcome) -> Self {
        use crate::breaker::Outcome;
        match outcome {
            Outcome::Success => Self::Success,
            Outcome::Failure => Self::Failure,
            Outcome::Ignored => Self::Ignored,
        }
    }
}

impl CallOutcome {
    /// What a stage that learns from its calls (`Admission::finish`) makes of this ending: a
    /// deadline or a timeout that cut the call is a failure (the dependency was too slow); a
    /// refusal by a later stage (an open breaker, a spent budget) is ignored, since the
    /// dependency was not called.
    pub(crate) fn learned(&self) -> crate::breaker::Outcome {
        use crate::breaker::Outcome;
        match self {
            Self::Success => Outcome::Success,
            Self::Failure | Self::TimedOut | Self::Rejected(Rejected::DeadlineExceeded) => {
                Outcome::Failure
            }
            Self::Ignored | Self::Rejected(_) | Self::Cancelled => Outcome::Ignored,
        }
    }
}

#[cfg(feature = "metrics")]
const LABELS: [&str; 6] = [
    "success",
    "failure",
    "ignored",
    "rejected",
    "timed_out",
    "cancelled",
];

impl CallOutcome {
    /// Its place in [`LABELS`].
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    const fn index(self) -> usize {
        match self {
            Self::Success => 0,
            Self::Failure => 1,
            Self::Ignored => 2,
            Self::Rejected(_) => 3,
            Self::TimedOut => 4,
            Self::Cancelled => 5,
        }
    }
}

/// The counters, histogram and listener of one named front, registered when it is built.
/// Clones share them.
#[derive(Clone)]
#[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(dead_code))]
pub(crate) struct CallTelemetry {
    policy: &'static str,
    name: crate::Name,
    listener: Option<Listener>,
    #[cfg(feature = "metrics")]
    metrics: std::sync::Arc<CallMetrics>,
}

#[cfg(feature = "metrics")]
struct CallMetrics {
    outcomes: [metrics::Counter; LABELS.len()],
    retries: metrics::Counter,
    budget_spent: metrics::Counter,
    duration: metrics::Histogram,
    /// Times calls: the CPU counter when the runtime's clock is real time (a clock read
    /// through the OS cost a call 2 × 23 ns here), the clock itself otherwise.
    clock: crate::rate::clock::LimiterClock,
}

impl std::fmt::Debug for CallTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallTelemetry")
            .field("policy", &self.policy)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CallTelemetry {
    /// The telemetry of the front `policy` named `name`, calling `listener` with its events
    /// (`rt`: the clock its calls are timed by).
    #[allow(unused_variables)]
    pub(crate) fn new<R: crate::rt::Clock>(
        policy: &'static str,
        name: crate::Name,
        listener: Option<Listener>,
        rt: &R,
    ) -> Self {
        #[cfg(feature = "metrics")]
        let metrics = {
            let label = name.label();
            let counter = |outcome: &'static str| {
                metrics::counter!(
                    "tidewall_calls_total",
                    "policy" => policy,
                    "name" => label.clone(),
                    "outcome" => outcome
                )
            };
            std::sync::Arc::new(CallMetrics {
                outcomes: LABELS.map(counter),
                retries: metrics::counter!(
                    "tidewall_retries_total", "policy" => policy, "name" => label.clone()
                ),
                budget_spent: metrics::counter!(
                    "tidewall_retry_budget_exhausted_total", "policy" => policy, "name" => label.clone()
                ),
                duration: metrics::histogram!(
                    "tidewall_call_duration_seconds", "policy" => policy, "name" => label
                ),
                clock: crate::rate::clock::LimiterClock::new(rt),
            })
        };
        Self {
            policy,
            name,
            listener,
            #[cfg(feature = "metrics")]
            metrics,
        }
    }

    /// The front's name.
    pub(crate) fn name(&self) -> &crate::Name {
        &self.name
    }

    /// `key`: the key the call was made for (an HTTP request's authority), if any.
    #[inline]
    fn event(&self, kind: EventKind<'_>, key: Option<&str>) {
        if let Some(listener) = &self.listener {
            listener.tell(self.policy, self.name.as_str(), key, kind);
        }
    }

    /// The span a call runs in.
    #[cfg(feature = "tracing")]
    pub(crate) fn span(&self) -> tracing::Span {
        tracing::debug_span!("tidewall.call", pipeline = self.name.as_str())
    }

    /// An attempt is starting (`attempt` counts from 1).
    #[inline]
    #[allow(unused_variables)]
    pub(crate) fn attempt(&self, attempt: u32) {
        #[cfg(feature = "tracing")]
        tracing::debug!(attempt, "attempt");
    }

    /// A retry was scheduled after `delay`; `key` as in [`watch`](Self::watch).
    #[inline]
    pub(crate) fn retry(&self, attempt: u32, delay: Duration, key: Option<&str>) {
        #[cfg(feature = "tracing")]
        tracing::debug!(failed_attempt = attempt, ?delay, "retry scheduled");
        #[cfg(feature = "metrics")]
        self.metrics.retries.increment(1);
        self.event(EventKind::RetryScheduled { attempt, delay }, key);
    }

    /// A retry was refused by the retry budget; `key` as in [`watch`](Self::watch).
    pub(crate) fn budget_spent(&self, key: Option<&str>) {
        #[cfg(feature = "tracing")]
        tracing::debug!("retry budget exhausted");
        #[cfg(feature = "metrics")]
        self.metrics.budget_spent.increment(1);
        self.event(EventKind::BudgetExhausted, key);
    }

    /// A call ended with `outcome` after `elapsed` (none when it was cancelled, or when no
    /// metric needs it); `key` as in [`watch`](Self::watch).
    #[allow(unused_variables)]
    pub(crate) fn finished(
        &self,
        outcome: CallOutcome,
        elapsed: Option<Duration>,
        key: Option<&str>,
    ) {
        #[cfg(feature = "tracing")]
        tracing::debug!(outcome = ?outcome, ?elapsed, "call ended");
        #[cfg(feature = "metrics")]
        {
            self.metrics.outcomes[outcome.index()].increment(1);
            if let Some(elapsed) = elapsed {
                self.metrics.duration.record(elapsed.as_secs_f64());
            }
        }
        if self.listener.is_some() {
            self.event(
                match &outcome {
                    CallOutcome::Success => EventKind::Succeeded,
                    CallOutcome::Failure => EventKind::Failed,
                    CallOutcome::Ignored => EventKind::Ignored,
                    CallOutcome::Cancelled => EventKind::Cancelled,
                    CallOutcome::Rejected(why) => EventKind::Rejected(why),
                    CallOutcome::TimedOut => EventKind::TimedOut,
                },
                key,
            );
        }
    }
}

/// Counts a call as cancelled if it is dropped before [`finish`](Self::finish).
pub(crate) struct Watch<'a> {
    telemetry: Option<&'a CallTelemetry>,
    /// The key the call is made for, told to the listener with its end.
    key: Option<&'a str>,
    /// For the duration histogram.
    #[cfg(feature = "metrics")]
    started: u64,
}

impl CallTelemetry {
    /// A guard for one call, if its end is reported anywhere (metrics, tracing or a
    /// listener); none otherwise, and the call runs unobserved. `key`: the key the call is
    /// made for, if the front has keys (an HTTP client: the request's authority), which the
    /// listener's events of the call carry.
    #[inline]
    #[allow(unused_variables)]
    pub(crate) fn watch<'a, R: crate::rt::Clock>(
        &'a self,
        rt: &R,
        key: Option<&'a str>,
    ) -> Option<Watch<'a>> {
        (cfg!(any(feature = "metrics", feature = "tracing")) || self.listener.is_some()).then(
            || Watch {
                telemetry: Some(self),
                key,
                #[cfg(feature = "metrics")]
                started: self.metrics.clock.nanos(rt),
            },
        )
    }
}

impl Watch<'_> {
    #[allow(unused_variables)]
    pub(crate) fn finish<R: crate::rt::Clock>(mut self, outcome: CallOutcome, rt: &R) {
        #[cfg(feature = "metrics")]
        let elapsed = self.telemetry.map(|telemetry| {
            let now = telemetry.metrics.clock.nanos(rt);
            Duration::from_nanos(now.saturating_sub(self.started))
        });
        #[cfg(not(feature = "metrics"))]
        let elapsed = None;
        if let Some(telemetry) = self.telemetry.take() {
            telemetry.finished(outcome, elapsed, self.key);
        }
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        if let Some(telemetry) = self.telemetry.take() {
            telemetry.finished(CallOutcome::Cancelled, None, self.key);
        }
    }
}
