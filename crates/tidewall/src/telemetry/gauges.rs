//! The gauges, read from a registry's policies (or an HTTP client's tables) when asked
//! (before a scrape), so that calls pay nothing for them.

use crate::breaker::State;
#[cfg(feature = "serde")]
use crate::config::Registry;
#[cfg(feature = "serde")]
use crate::rt::Clock;

/// Sets a keyed table's `tidewall_keyed_keys` and `tidewall_keyed_max_keys`.
pub(crate) fn keyed_table(policy: &'static str, name: &crate::Name, keys: usize, max_keys: usize) {
    metrics::gauge!("tidewall_keyed_keys", "policy" => policy, "name" => name.label())
        .set(keys as f64);
    metrics::gauge!("tidewall_keyed_max_keys", "policy" => policy, "name" => name.label())
        .set(max_keys as f64);
}

/// Sets `tidewall_keyed_breaker_keys` of a keyed breaker table (an HTTP client's) holding `keys` keys, of which
/// `not_closed` are not closed: one series per state, a state no key is in at 0.
#[cfg(feature = "http")]
pub(crate) fn keyed_breaker_states(name: &crate::Name, keys: usize, not_closed: &[State]) {
    for state in State::ALL {
        let count = if state == State::Closed {
            // The two were read apart: a key made or forgotten between is not a negative.
            keys.saturating_sub(not_closed.len())
        } else {
            not_closed.iter().filter(|s| **s == state).count()
        };
        metrics::gauge!("tidewall_keyed_breaker_keys", "name" => name.label(), "state" => state.as_str())
            .set(count as f64);
    }
}

/// Sets the gauges of every policy `registry` holds.
#[cfg(feature = "serde")]
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
        keyed_table(table.policy, &table.name, table.keys, table.max_keys);
    }
    #[cfg(feature = "http")]
    for (_, client) in registry.http_clients() {
        client.record_gauges();
    }
    for (name, hedge) in registry.hedges() {
        if let Some(balance) = hedge.hedge().budget_balance() {
            metrics::gauge!("tidewall_hedge_budget_balance", "name" => name.label())
                .set(balance as f64);
        }
    }
    let now = registry.runtime().now();
    for (name, budget) in registry.retry_budgets() {
        metrics::gauge!("tidewall_retry_budget_balance", "name" => name.label())
            .set(budget.balance(now) as f64);
    }
}
