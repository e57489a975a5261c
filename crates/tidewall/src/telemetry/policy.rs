//! Optional `tracing` events and `metrics` counters; compiled out without the features.

/// A breaker changed state.
#[allow(unused_variables)]
pub(crate) fn breaker_transition(
    change: &crate::breaker::StateChange<'_>,
    name: &crate::Name,
    key: Option<&str>,
) {
    #[cfg(feature = "tracing")]
    tracing::info!(
        breaker = change.name,
        key,
        from = change.from.as_str(),
        to = change.to.as_str(),
        reason = ?change.reason,
        generation = change.generation,
        "circuit breaker state change"
    );
    // A keyed breaker's entries carry their key as a label only when the user chose a label
    // for keys (`key_label`): the label's cardinality is then theirs to bound.
    #[cfg(feature = "metrics")]
    match key {
        None => metrics::counter!(
            "tidewall_breaker_transitions_total",
            "breaker" => name.label(),
            "to" => change.to.as_str()
        )
        .increment(1),
        Some(key) => metrics::counter!(
            "tidewall_breaker_transitions_total",
            "breaker" => name.label(),
            "key" => key.to_owned(),
            "to" => change.to.as_str()
        )
        .increment(1),
    }
}

/// A policy's rejection telemetry: a tracing event, and the counter
/// `tidewall_rejections_total{policy, name, reason}` (reason: [`Rejected::kind`]). The counters
/// of the reasons the policy gives are registered when it is built (install the recorder
/// first), so a rejection only increments a handle and never allocates; any other reason's
/// counter registers on its first rejection. Shared (`Arc`) by the per-key policies of a keyed
/// table.
///
/// [`Rejected::kind`]: crate::Rejected::kind
// Only the tracing event reads the names back; the metrics counters take them as labels
// when they are registered, so without either feature they are kept but unread.
#[cfg_attr(not(any(feature = "tracing", feature = "metrics")), allow(dead_code))]
pub(crate) struct Rejections {
    policy: &'static str,
    pub(crate) name: crate::Name,
    #[cfg(feature = "metrics")]
    counters: [std::sync::OnceLock<metrics::Counter>; crate::reject::KINDS.len()],
}

impl Rejections {
    /// The telemetry of `policy` named `name`, whose refusals are of the `kinds` given (one
    /// example value each).
    #[allow(unused_variables)]
    pub(crate) fn new(policy: &'static str, name: &crate::Name, kinds: &[crate::Rejected]) -> Self {
        let rejections = Self {
            policy,
            name: name.clone(),
            #[cfg(feature = "metrics")]
            counters: Default::default(),
        };
        #[cfg(feature = "metrics")]
        for kind in kinds {
            rejections.counter(kind);
        }
        rejections
    }

    /// A handle to share among the per-key policies of a keyed table.
    pub(crate) fn shared(
        policy: &'static str,
        name: &crate::Name,
        kinds: &[crate::Rejected],
    ) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self::new(policy, name, kinds))
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

    /// Records one rejection.
    #[allow(unused_variables)]
    pub(crate) fn record(&self, reason: &crate::Rejected) {
        #[cfg(feature = "tracing")]
        tracing::debug!(
            policy = self.policy,
            name = self.name.as_str(),
            reason = reason.kind(),
            retry_after = ?crate::RetryAfter::retry_after(reason),
            "call rejected"
        );
        #[cfg(feature = "metrics")]
        self.counter(reason).increment(1);
    }
}

/// Something happened under a supervisor (restarts and escalations are the ones to alert on).
#[allow(unused_variables)]
pub(crate) fn supervisor_event(event: &crate::task::supervisor::SupervisorEvent) {
    #[cfg(any(feature = "tracing", feature = "metrics"))]
    use crate::task::supervisor::SupervisorEvent;
    #[cfg(feature = "tracing")]
    match event {
        SupervisorEvent::Restarting { .. } | SupervisorEvent::Exited { .. } => {
            tracing::warn!(?event, "supervisor: child exited or restarting");
        }
        SupervisorEvent::Escalating { .. } => tracing::error!(?event, "supervisor: escalating"),
        _ => tracing::debug!(?event, "supervisor event"),
    }
    #[cfg(feature = "metrics")]
    match event {
        SupervisorEvent::Restarting { child, .. } => {
            metrics::counter!("tidewall_supervisor_restarts_total", "child" => child.to_string())
                .increment(1);
        }
        SupervisorEvent::Escalating { child } => {
            metrics::counter!("tidewall_supervisor_escalations_total", "child" => child.to_string())
                .increment(1);
        }
        _ => {}
    }
}
