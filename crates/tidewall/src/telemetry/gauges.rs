//! The gauges, read from a registry's policies when asked (before a scrape), so that calls
//! pay nothing for them.

use crate::breaker::State;
use crate::config::Registry;
use crate::rt::Clock;

/// Sets the gauges of every policy `registry` holds.
pub(crate) fn record_gauges<R: Clock>(registry: &Registry<R>) {
    for (name, breaker) in registry.breakers() {
        let state = breaker.state();
        for each in State::ALL {
            metrics::gauge!("tidewall_breaker_state", "name" => name.label(), "state" => each.as_str())
                .set(if each == state { 1.0 } else { 0.0 });
        }
    }
    for (name, bulkhead) in registry.bulkheads() {
        metrics::gauge!("tidewall_bulkhead_in_flight", "name" => name.label())
            .set(bulkhead.in_flight() as f64);
        metrics::gauge!("tidewall_bulkhead_queued", "name" => name.label())
            .set(bulkhead.queued() as f64);
        metrics::gauge!("tidewall_bulkhead_capacity", "name" => name.label())
            .set(bulkhead.capacity() as f64);
    }
    for (name, limiter) in registry.adaptive_limiters() {
        metrics::gauge!("tidewall_adaptive_limit", "name" => name.label())
            .set(f64::from(limiter.limit()));
        metrics::gauge!("tidewall_adaptive_in_flight", "name" => name.label())
            .set(limiter.in_flight() as f64);
        metrics::gauge!("tidewall_adaptive_queued", "name" => name.label())
            .set(limiter.queued() as f64);
    }
    for (name, limiter) in registry.rate_limiters() {
        metrics::gauge!("tidewall_rate_limit_available", "name" => name.label())
            .set(f64::from(limiter.available()));
    }
    for table in registry.keyed_tables() {
        metrics::gauge!("tidewall_keyed_keys", "policy" => table.policy, "name" => table.name.label())
            .set(table.keys as f64);
        metrics::gauge!("tidewall_keyed_max_keys", "policy" => table.policy, "name" => table.name.label())
            .set(table.max_keys as f64);
    }
    let now = registry.runtime().now();
    for (name, budget) in registry.retry_budgets() {
        metrics::gauge!("tidewall_retry_budget_balance", "name" => name.label())
            .set(budget.balance(now) as f64);
    }
}
