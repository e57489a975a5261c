//! A policy's own counters: rejections by reason, and calls by outcome for the policies that
//! see outcomes.

use super::{EventKind, Listener};
use crate::breaker::Outcome;

/// A policy's telemetry: for each rejection a tracing event and the counter
/// `tidewall_rejections_total{policy, name, reason}` (reason: [`Rejected::kind`]); for a
/// policy that sees how calls end (a breaker), the counter
/// `tidewall_calls_total{policy, name, outcome}`. The counters of the reasons the policy gives
/// and of its outcomes are registered when it is built (install the recorder first), so
/// counting only increments a handle and never allocates; any other reason's counter
/// registers on its first rejection. Shared (`Arc`) by the per-key policies of a keyed table.
///
/// [`Rejected::kind`]: crate::Rejected::kind
// Only the tracing event reads the names back; the metrics counters take them as labels
// when they are registered, so without either feature they are kept but unread.
#[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(dead_code))]
pub(crate) struct PolicyTelemetry {
    policy: &'static str,
    pub(crate) name: crate::Name,
    listener: Option<Listener>,
    #[cfg(feature = "metrics")]
    counters: [std::sync::OnceLock<metrics::Counter>; crate::reject::KINDS.len()],
    /// By [`Outcome`]: success, failure, ignored.
    #[cfg(feature = "metrics")]
    outcomes: Option<[metrics::Counter; 3]>,
    #[cfg(feature = "metrics")]
    waits: Option<metrics::Histogram>,
    /// Hedges launched and refused by the budget.
    #[cfg(feature = "metrics")]
    hedges: Option<[metrics::Counter; 2]>,
    /// A breaker's transitions, by the state moved to.
    #[cfg(feature = "metrics")]
    transitions: Option<[metrics::Counter; crate::breaker::State::ALL.len()]>,
}

impl PolicyTelemetry {
    /// The telemetry of `policy` named `name`, whose refusals are of the `kinds` given (one
    /// example value each).
    #[allow(unused_variables)]
    pub(crate) fn new(policy: &'static str, name: &crate::Name, kinds: &[crate::Rejected]) -> Self {
        let telemetry = Self {
            policy,
            name: name.clone(),
            listener: None,
            #[cfg(feature = "metrics")]
            counters: Default::default(),
            #[cfg(feature = "metrics")]
            outcomes: None,
            #[cfg(feature = "metrics")]
            waits: None,
            #[cfg(feature = "metrics")]
            hedges: None,
            #[cfg(feature = "metrics")]
            transitions: None,
        };
        #[cfg(feature = "metrics")]
        for kind in kinds {
            telemetry.counter(kind);
        }
        telemetry
    }

    /// The `policy` label.
    pub(crate) fn policy(&self) -> &'static str {
        self.policy
    }

    /// Also calls `listener` with every event.
    #[must_use]
    pub(crate) fn with_listener(self, listener: Option<Listener>) -> Self {
        Self { listener, ..self }
    }

    /// Its listener, for a keyed table's own refusals (a full table).
    pub(crate) fn listener(&self) -> Option<Listener> {
        self.listener.clone()
    }

    /// Calls the listener, if there is one. `key`: the label of the key the event is of, in
    /// a keyed table that labels its keys; `None` otherwise.
    #[inline]
    pub(crate) fn event(&self, kind: EventKind<'_>, key: Option<&str>) {
        if let Some(listener) = &self.listener {
            listener.tell(self.policy, self.name.as_str(), key, kind);
        }
    }

    /// Whether [`outcome`](Self::outcome) reports anything: counters or a listener.
    pub(crate) fn reports_outcomes(&self) -> bool {
        #[cfg(feature = "metrics")]
        if self.outcomes.is_some() {
            return true;
        }
        self.listener.is_some()
    }

    /// Whether waits are timed: for metrics or a listener.
    #[inline]
    pub(crate) fn times_waits(&self) -> bool {
        #[cfg(feature = "metrics")]
        if self.waits.is_some() {
            return true;
        }
        self.listener.is_some()
    }

    /// Also counts calls by [`Outcome`].
    #[must_use]
    pub(crate) fn with_outcomes(self) -> Self {
        #[cfg(not(feature = "metrics"))]
        return self;
        #[cfg(feature = "metrics")]
        {
            let outcomes = OUTCOME_LABELS.map(|outcome| {
                metrics::counter!(
                    "tidewall_calls_total",
                    "policy" => self.policy,
                    "name" => self.name.label(),
                    "outcome" => outcome
                )
            });
            Self {
                outcomes: Some(outcomes),
                ..self
            }
        }
    }

    /// Also times the waits that end admitted (`tidewall_wait_duration_seconds`).
    #[must_use]
    pub(crate) fn with_waits(self) -> Self {
        #[cfg(not(feature = "metrics"))]
        return self;
        #[cfg(feature = "metrics")]
        {
            let waits = metrics::histogram!(
                "tidewall_wait_duration_seconds",
                "policy" => self.policy,
                "name" => self.name.label()
            );
            Self {
                waits: Some(waits),
                ..self
            }
        }
    }

    /// Also counts hedges launched (`tidewall_hedges_total`) and refused by the budget
    /// (`tidewall_retry_budget_exhausted_total`).
    #[must_use]
    pub(crate) fn with_hedges(self) -> Self {
        #[cfg(not(feature = "metrics"))]
        return self;
        #[cfg(feature = "metrics")]
        {
            let labels = |name: &'static str| metrics::counter!(name, "policy" => self.policy, "name" => self.name.label());
            let hedges = [
                labels("tidewall_hedges_total"),
                labels("tidewall_retry_budget_exhausted_total"),
            ];
            Self {
                hedges: Some(hedges),
                ..self
            }
        }
    }

    /// Also counts a breaker's transitions by the state it moved to
    /// (`tidewall_breaker_transitions_total`).
    #[must_use]
    pub(crate) fn with_transitions(self) -> Self {
        #[cfg(not(feature = "metrics"))]
        return self;
        #[cfg(feature = "metrics")]
        {
            let transitions = crate::breaker::State::ALL.map(|to| {
                metrics::counter!(
                    "tidewall_breaker_transitions_total",
                    "policy" => self.policy,
                    "name" => self.name.label(),
                    "to" => to.as_str()
                )
            });
            Self {
                transitions: Some(transitions),
                ..self
            }
        }
    }

    /// A breaker changed state; `key` is a keyed breaker's entry's label, when its table was
    /// given one (`key_label`).
    #[allow(unused_variables)]
    pub(crate) fn transition(&self, change: &crate::breaker::StateChange<'_>, key: Option<&str>) {
        #[cfg(feature = "tracing")]
        tracing::info!(
            policy = self.policy,
            name = change.name,
            key,
            from = change.from.as_str(),
            to = change.to.as_str(),
            reason = ?change.reason,
            generation = change.generation,
            "circuit breaker state change"
        );
        // A keyed breaker's entries carry their key as a label only when the user chose a
        // label for keys: the label's cardinality is then theirs to bound, and its series are
        // made on a key's first transition (keys are not known in advance).
        #[cfg(feature = "metrics")]
        match (key, &self.transitions) {
            (None, Some(transitions)) => {
                let to = crate::breaker::State::ALL
                    .iter()
                    .position(|s| *s == change.to)
                    .unwrap_or(0);
                transitions[to].increment(1);
            }
            (None, None) => {}
            (Some(key), _) => metrics::counter!(
                "tidewall_breaker_transitions_total",
                "policy" => self.policy,
                "name" => self.name.label(),
                "key" => key.to_owned(),
                "to" => change.to.as_str()
            )
            .increment(1),
        }
        self.event(EventKind::StateChanged(change), key);
    }

    /// A hedge was launched (`hedge` from 1).
    #[allow(unused_variables)]
    pub(crate) fn hedge_launched(&self, hedge: u32) {
        #[cfg(feature = "tracing")]
        tracing::debug!(
            policy = self.policy,
            name = self.name.as_str(),
            hedge,
            "hedge launched"
        );
        #[cfg(feature = "metrics")]
        if let Some([launched, _]) = &self.hedges {
            launched.increment(1);
        }
        self.event(EventKind::HedgeLaunched { hedge }, None);
    }

    /// A hedge was refused by the budget.
    pub(crate) fn budget_spent(&self) {
        #[cfg(feature = "tracing")]
        tracing::debug!(
            policy = self.policy,
            name = self.name.as_str(),
            "hedge budget exhausted"
        );
        #[cfg(feature = "metrics")]
        if let Some([_, refused]) = &self.hedges {
            refused.increment(1);
        }
        self.event(EventKind::BudgetExhausted, None);
    }

    /// A handle to share among the per-key policies of a keyed table.
    pub(crate) fn shared(self) -> std::sync::Arc<Self> {
        std::sync::Arc::new(self)
    }

    #[cfg(feature = "metrics")]
    fn counter(&self, reason: &crate::Rejected) -> &metrics::Counter {
        self.counters[reason.kind_index()].get_or_init(|| {
            metrics::counter!(
                "tidewall_rejections_total",
                "policy" => self.policy,
                "name" => self.name.label(),
                "reason" => reason.kind()
            )
        })
    }

    /// Records one rejection, for the admitting paths: with nothing to report to (no
    /// `metrics` or `tracing`, no listener) it is a test of one flag; otherwise
    /// [`record`](Self::record), out of line and cold, so that the paths keep the shape they
    /// have without it.
    /// `key` as in [`event`](Self::event).
    #[inline]
    pub(crate) fn refused(&self, reason: &crate::Rejected, key: Option<&str>) {
        if self.reports() {
            self.record(reason, key);
        }
    }

    /// Whether anything is reported: the features compiled in, or a listener.
    #[inline]
    pub(crate) fn reports(&self) -> bool {
        cfg!(any(feature = "metrics", feature = "tracing")) || self.listener.is_some()
    }

    /// Records one rejection; `key` as in [`event`](Self::event).
    #[cold]
    #[inline(never)]
    #[allow(unused_variables)]
    pub(crate) fn record(&self, reason: &crate::Rejected, key: Option<&str>) {
        #[cfg(feature = "tracing")]
        tracing::debug!(
            policy = self.policy,
            name = self.name.as_str(),
            key,
            reason = reason.kind(),
            retry_after = ?crate::RetryAfter::retry_after(reason),
            "call rejected"
        );
        #[cfg(feature = "metrics")]
        self.counter(reason).increment(1);
        self.event(EventKind::Rejected(reason), key);
    }

    /// Records a wait that ended admitted (in the histogram when built
    /// [`with_waits`](Self::with_waits)).
    pub(crate) fn waited(&self, wait: std::time::Duration) {
        #[cfg(feature = "metrics")]
        if let Some(waits) = &self.waits {
            waits.record(wait.as_secs_f64());
        }
        self.event(EventKind::Waited(wait), None);
    }

    /// Records how an admitted call ended (counted only when built
    /// [`with_outcomes`](Self::with_outcomes)).
    /// `key`: the label of the key it was a call of, in a keyed table.
    #[inline]
    #[allow(unused_variables)]
    pub(crate) fn outcome(&self, outcome: Outcome, key: Option<&str>) {
        #[cfg(feature = "metrics")]
        if let Some(outcomes) = &self.outcomes {
            outcomes[outcome_index(outcome)].increment(1);
        }
        if self.listener.is_some() {
            let kind = match outcome {
                Outcome::Success => EventKind::Succeeded,
                Outcome::Failure => EventKind::Failed,
                Outcome::Ignored => EventKind::Ignored,
            };
            self.event(kind, key);
        }
    }
}

/// The `outcome` labels of a breaker's outcomes, in [`outcome_index`] order.
#[cfg(feature = "metrics")]
const OUTCOME_LABELS: [&str; 3] = ["success", "failure", "ignored"];

/// An outcome's place in [`OUTCOME_LABELS`].
#[cfg(feature = "metrics")]
const fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Success => 0,
        Outcome::Failure => 1,
        Outcome::Ignored => 2,
    }
}
