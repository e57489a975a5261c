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
/// registry, so a dashboard sees them at zero from the start; and, as Prometheus reports its
/// own configuration, whether the last reload was applied and when one last was (the
/// registry's build counts as the first).
#[cfg(feature = "serde")]
pub(crate) struct ReloadCounters {
    /// The registry's name: the `registry` label of each series.
    registry: crate::Name,
    #[cfg(feature = "metrics")]
    counters: [metrics::Counter; 2],
    /// 1 when the last reload was applied, 0 when it was refused.
    #[cfg(feature = "metrics")]
    successful: metrics::Gauge,
    /// When a reload was last applied, in seconds since the Unix epoch (the wall clock).
    #[cfg(feature = "metrics")]
    applied_at: metrics::Gauge,
}

#[cfg(feature = "serde")]
impl ReloadCounters {
    /// The counters of the registry `registry` being built (see [`built`](Self::built)).
    pub(crate) fn new(registry: crate::Name) -> Self {
        Self {
            #[cfg(feature = "metrics")]
            counters: ["applied", "refused"].map(|outcome| {
                metrics::counter!(
                    "tidewall_config_reloads_total",
                    "registry" => registry.label(),
                    "outcome" => outcome
                )
            }),
            #[cfg(feature = "metrics")]
            successful: metrics::gauge!(
                "tidewall_config_last_reload_successful",
                "registry" => registry.label()
            ),
            #[cfg(feature = "metrics")]
            applied_at: metrics::gauge!(
                "tidewall_config_last_reload_success_timestamp_seconds",
                "registry" => registry.label()
            ),
            registry,
        }
    }

    /// The registry's name.
    pub(crate) fn registry(&self) -> &str {
        self.registry.as_str()
    }

    /// The registry was built: its configuration is in force, as an applied reload's.
    pub(crate) fn built(&self) {
        self.set_last(true);
    }

    /// One reload, applied or refused.
    #[allow(unused_variables)]
    pub(crate) fn count(&self, applied: bool) {
        #[cfg(feature = "tracing")]
        tracing::info!(
            registry = self.registry.as_str(),
            outcome = if applied { "applied" } else { "refused" },
            "configuration reload"
        );
        #[cfg(feature = "metrics")]
        self.counters[usize::from(!applied)].increment(1);
        self.set_last(applied);
    }

    /// Sets the last reload's gauges.
    #[allow(unused_variables)]
    fn set_last(&self, applied: bool) {
        #[cfg(feature = "metrics")]
        {
            self.successful.set(f64::from(u8::from(applied)));
            if applied {
                // The wall clock, not the registry's runtime: a dashboard compares it with
                // Prometheus' `time()`. A clock before 1970 reads 0.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                self.applied_at.set(now.as_secs_f64());
            }
        }
    }
}
