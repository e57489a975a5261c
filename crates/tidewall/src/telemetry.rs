//! Optional `tracing` events and `metrics` counters; compiled out without the features.

/// A breaker changed state.
#[allow(unused_variables)]
pub(crate) fn breaker_transition(change: &crate::breaker::StateChange) {
    #[cfg(feature = "tracing")]
    tracing::info!(
        breaker = change.name,
        from = change.from.as_str(),
        to = change.to.as_str(),
        reason = ?change.reason,
        "circuit breaker state change"
    );
    #[cfg(feature = "metrics")]
    metrics::counter!(
        "tidewall_breaker_transitions_total",
        "breaker" => change.name,
        "to" => change.to.as_str()
    )
    .increment(1);
}

/// A policy rejected a call.
#[allow(unused_variables)]
pub(crate) fn rejected(policy: &'static str, name: &'static str, reason: &crate::Rejected) {
    #[cfg(feature = "tracing")]
    tracing::debug!(policy, name, %reason, "call rejected");
    #[cfg(feature = "metrics")]
    metrics::counter!("tidewall_rejections_total", "policy" => policy, "name" => name).increment(1);
}
