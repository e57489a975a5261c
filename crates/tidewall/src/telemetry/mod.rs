//! What the policies report, with the `metrics` and `tracing` features: compiled out without
//! them, and with them only a handle increment per event (every counter a policy can touch is
//! registered when it is built, so install the recorder first).
//!
//! Every metric carries the policy's kind (`policy`) and its instance name (`name`, set with
//! the builder's `name`; the config [`Registry`](crate::config::Registry) names each policy
//! after its instance). Names are Prometheus-style; durations are in seconds.
//!
//! | metric | kind | labels | counts |
//! |---|---|---|---|
//! | `tidewall_calls_total` | counter | `policy` (`breaker`, `pipeline`), `name`, `outcome` | calls by how they ended: a breaker's `success`, `failure`, `ignored` as recorded; a pipeline's `success`, `failure`, `ignored` (its classifier's verdict on the final result), `rejected`, `timed_out`, `cancelled` (the call's future dropped) |
//! | `tidewall_rejections_total` | counter | `policy`, `name`, `reason` ([`Rejected::kind`](crate::Rejected::kind)) | refusals, as the caller was finally refused (a wait that ends admitted is not one) |
//! | `tidewall_retries_total` | counter | `policy` (`pipeline`), `name` | retries scheduled |
//! | `tidewall_retry_budget_exhausted_total` | counter | `policy` (`pipeline`), `name` | retries the retry budget refused |
//! | `tidewall_breaker_transitions_total` | counter | `breaker`, `to` (and `key` with [`key_label`](crate::breaker::KeyedCircuitBreakerBuilder::key_label)) | state changes |
//! | `tidewall_call_duration_seconds` | histogram | `policy` (`pipeline`), `name` | a call's time, waits and retries included (not for cancelled calls) |
//! | `tidewall_wait_duration_seconds` | histogram | `policy` (`bulkhead`), `name` | time queued for a permit, for waits that ended admitted |
//! | `tidewall_breaker_state` | gauge | `name`, `state` | 1 for the state the breaker is in, 0 for the others |
//! | `tidewall_bulkhead_in_flight`, `tidewall_bulkhead_queued`, `tidewall_bulkhead_capacity` | gauge | `name` | permits held, callers waiting, permits in all |
//! | `tidewall_rate_limit_available` | gauge | `name` | cells one request could take now |
//! | `tidewall_retry_budget_balance` | gauge | `name` | retries the budget would grant now |
//! | `tidewall_config_reloads_total` | counter | `outcome` (`applied`, `refused`) | [`Registry::reload`](crate::config::Registry::reload)s, from a watched file too |
//! | `tidewall_supervisor_restarts_total`, `tidewall_supervisor_escalations_total` | counter | `child` | a supervisor's restarts and escalations |
//!
//! Gauges cost the calls nothing: they are read from the policies when you ask, with
//! [`Registry::record_gauges`](crate::config::Registry::record_gauges) (features `metrics` and
//! `serde`) before each scrape.
//!
//! Without any feature, every policy takes a listener: `on_event` on its builder is called
//! with each [`Event`] (outcomes, refusals with their reason, state changes, retries with
//! their delay, a spent retry budget, waits).
//!
//! With `tracing`, each [pipeline](crate::pipeline) call runs in a `tidewall.call` span (field
//! `pipeline`: its name) with a debug event per attempt and per retry scheduled (its delay);
//! rejections and breaker state changes are events too.

mod calls;
mod events;
#[cfg(all(feature = "metrics", feature = "serde"))]
mod gauges;
mod listener;
mod policy;

pub(crate) use calls::{CallOutcome, CallTelemetry};
#[cfg(feature = "serde")]
pub(crate) use events::ReloadCounters;
pub(crate) use events::{breaker_transition, supervisor_event};
#[cfg(all(feature = "metrics", feature = "serde"))]
pub(crate) use gauges::record_gauges;
pub(crate) use listener::Listener;
pub use listener::{Event, EventKind};
pub(crate) use policy::PolicyTelemetry;
