//! Configuration reloads and supervisor events as `tracing` events and `metrics` counters.

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

/// A registry's reloads, applied or refused: both counters are registered with the
/// registry, so a dashboard sees them at zero from the start.
#[cfg(feature = "serde")]
pub(crate) struct ReloadCounters {
    #[cfg(feature = "metrics")]
    counters: [metrics::Counter; 2],
}

#[cfg(feature = "serde")]
impl ReloadCounters {
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            counters: ["applied", "refused"].map(
                |outcome| metrics::counter!("tidewall_config_reloads_total", "outcome" => outcome),
            ),
        }
    }

    /// One reload, applied or refused.
    #[allow(unused_variables)]
    pub(crate) fn count(&self, applied: bool) {
        #[cfg(feature = "tracing")]
        tracing::info!(
            outcome = if applied { "applied" } else { "refused" },
            "configuration reload"
        );
        #[cfg(feature = "metrics")]
        self.counters[usize::from(!applied)].increment(1);
    }
}
