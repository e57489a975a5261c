//! What the policies report, with the `metrics` and `tracing` features: compiled out without
//! them; with `metrics`, a handle increment per event (every counter a policy can touch is
//! registered when it is built, so install the recorder first) and, for a pipeline call's
//! duration, two reads of the CPU counter per call (of its runtime's clock when that is
//! virtual). The cost is measured in `docs/BENCHMARKS.md` (`cargo bench -p tidewall-benches
//! --bench telemetry`).
//!
//! Every policy's metric carries the policy's kind (`policy`) and its instance name (`name`,
//! set with the builder's `name`; the config [`Registry`](crate::config::Registry) names each
//! policy after its instance); gauges, read by name from a registry, carry `name` (and a
//! breaker's state gauge its `state`, a keyed table's its `policy`: see the table below).
//! Names are Prometheus-style; durations are in seconds. Checking a configuration
//! ([`Config::validate`](crate::config::Config::validate), a layer that is not an instance)
//! registers nothing.
//!
//! | metric | kind | labels | counts |
//! |---|---|---|---|
//! | `tidewall_calls_total` | counter | `policy` (`breaker`, `pipeline`, `http_client`, `hedge`), `name`, `outcome` | calls by how they ended: a breaker's `success`, `failure`, `ignored` as recorded; a [hedge](crate::hedge::HedgeFuture)'s (a call, however many attempts) `success`, `failure`, `ignored` by its classifier's verdict on the answer, once it resolves (a call dropped first counts nothing); a pipeline's or an [HTTP client](crate::http::ClientPolicies)'s (a request, however many attempts it made) `success`, `failure`, `ignored` (its classifier's verdict on the final result), `rejected` (its error is [`Error::Rejected`](crate::Error::Rejected), or a policy below refused its last attempt: under a [`PipelineLayer`](crate::tower::PipelineLayer), or below an HTTP client, its error's [`FailureKind::Refused`](crate::http::FailureKind::Refused)), `timed_out` ([`Error::TimedOut`](crate::Error::TimedOut)) — its own: under a `PipelineLayer`, a timeout from a layer below is the service's error, judged by the classifier like any other (`failure` by default), `cancelled` (the call's future dropped after its first poll) |
//! | `tidewall_rejections_total` | counter | `policy`, `name`, `reason` ([`Rejected::kind`](crate::Rejected::kind)) | the policy's refusals, each time it refuses: a pipeline's breaker refusing an attempt counts one even if a retry then passes (a wait that ends admitted is not one; a call's final answer is in `tidewall_calls_total`) |
//! | `tidewall_retries_total` | counter | `policy` (`pipeline`, `http_client`), `name` | retries scheduled |
//! | `tidewall_hedges_total` | counter | `policy` (`hedge`), `name` | hedges launched: every attempt after the primary, those started at once because every running attempt had failed included (on a failing dependency, these are retries) |
//! | `tidewall_retry_budget_exhausted_total` | counter | `policy` (`pipeline`, `hedge`, `http_client`), `name` | retries (hedges) the budget refused; a hedge refused while attempts run, asked for again once they all failed and refused again, counts twice |
//! | `tidewall_breaker_transitions_total` | counter | `policy` (`breaker`), `name`, `to` ([`State::as_str`](crate::breaker::State::as_str)), and `key` with [`key_label`](crate::breaker::KeyedCircuitBreakerBuilder::key_label) | state changes, each a `StateChanged` event (a closed breaker reset by a reconfiguration that changes its window counts one to `closed`; a keyed table's key series are made on a key's first change) |
//! | `tidewall_call_duration_seconds` | histogram | `policy` (`pipeline`, `http_client`), `name` | a call's time, waits and retries included (not for cancelled calls) |
//! | `tidewall_wait_duration_seconds` | histogram | `policy` (`bulkhead`, `adaptive`), `name` | time queued for a permit, for waits that ended admitted |
//! | `tidewall_breaker_state` | gauge | `name`, `state` ([`State::as_str`](crate::breaker::State::as_str)) | 1 for the state the breaker is in, 0 for the others |
//! | `tidewall_bulkhead_in_flight`, `tidewall_bulkhead_queued`, `tidewall_bulkhead_capacity` | gauge | `name` | permits held, callers waiting, permits in all |
//! | `tidewall_rate_limit_available` | gauge | `name` | cells one request could take now |
//! | `tidewall_adaptive_limit`, `tidewall_adaptive_in_flight`, `tidewall_adaptive_queued` | gauge | `name` | an [adaptive limiter](crate::adaptive::AdaptiveLimiter)'s limit in force, calls in flight (above the limit for a while after it falls) and callers waiting |
//! | `tidewall_keyed_keys`, `tidewall_keyed_max_keys` | gauge | `policy`, `name` | a [keyed table](crate::config::KeyedTable)'s keys held, and its bound (an HTTP client's per-authority tables too) |
//! | `tidewall_keyed_breaker_keys` | gauge | `name`, `state` | an HTTP client's authorities whose breaker is in each state |
//! | `tidewall_retry_budget_balance` | gauge | `name` | retries the budget would grant now |
//! | `tidewall_hedge_budget_balance` | gauge | `name` | hedges a registry hedge's budget would grant now ([`Hedge::budget_balance`](crate::hedge::Hedge::budget_balance); hedges without a budget have none; one whose budget a reload removed keeps its last value, as the `metrics` facade cannot drop a series) |
//! | `tidewall_config_reloads_total` | counter | `registry` ([`RegistryBuilder::name`](crate::config::RegistryBuilder::name), default `registry`), `outcome` (`applied`, `refused`) | [`Registry::reload`](crate::config::Registry::reload)s, from a watched file too |
//! | `tidewall_config_last_reload_successful` | gauge | `registry` | 1 when the registry's last reload was applied (or none was tried since it was built), 0 when it was refused: the file on disk is not the configuration in force |
//! | `tidewall_config_last_reload_success_timestamp_seconds` | gauge | `registry` | when the registry's configuration was last applied (built, or reloaded), in wall-clock seconds since the Unix epoch; registries of one name share these series (the last to build or reload sets them), so give each registry of a process its own name |
//! | `tidewall_supervisor_restarts_total`, `tidewall_supervisor_escalations_total` | counter | `child` | a supervisor's restarts and escalations |
//! | `tidewall_chaos_injections_total` | counter | `policy` (`chaos`), `name`, `fault` (`latency`, `error`, `hang`, `alter`) | faults a [`Chaos`](crate::chaos::Chaos) handle (feature `chaos`) injected, counted when drawn: a call given latency and an error counts once under each; `alter` counts calls chosen for altering, whether or not the operation then succeeded |
//!
//! A keyed breaker's, bulkhead's or adaptive limiter's keys count together in the series of
//! the table's name, with the `policy` each key is (`breaker`, `bulkhead`, `adaptive`): the series a
//! plain policy of that name counts in too, if one is also used (a
//! [registry](crate::config::Registry)'s pipeline of the instance, say). A keyed rate
//! limiter's refusals count under `keyed_rate`. A policy built outside this crate counts its
//! refusals in the same series through [`Refusals`]: `tidewall-redis`'s limits do, as
//! `redis_rate` and `redis_bulkhead`.
//!
//! Gauges cost the calls nothing: they are read from the policies when you ask, with
//! [`Registry::record_gauges`](crate::config::Registry::record_gauges) (features `metrics` and
//! `serde`), or an HTTP client's
//! [`ClientPolicies::record_gauges`](crate::http::ClientPolicies::record_gauges), before each
//! scrape.
//!
//! Without any feature, the breaker, bulkhead, adaptive limiter, rate limiter, hedge and
//! pipeline builders take a listener (a keyed table, its base builder's; a retry, a hook with
//! `notify`; the fault injector, none): `on_event` is called
//! with each [`Event`] (outcomes, refusals with their reason, state changes, retries with
//! their delay, hedges launched, a spent budget, waits). With no listener set, a policy tests
//! one flag where an event would be.
//!
//! With `tracing`, each [pipeline](crate::pipeline) call runs in a `tidewall.call` span (field
//! `pipeline`: its name), and each HTTP client request in a `tidewall.http` span (fields
//! `client`, `method`, `authority`), with a debug event per attempt, per retry scheduled (its
//! delay), per retry its budget refused and at its end (its outcome); rejections, hedges
//! launched, hedges the budget refused, breaker state changes and reloads are events too,
//! and (feature `chaos`) each injected fault is a debug event.

mod calls;
#[cfg(feature = "chaos")]
mod chaos;
mod events;
#[cfg(all(feature = "metrics", any(feature = "serde", feature = "http")))]
pub(crate) mod gauges;
mod listener;
mod policy;
mod refusals;

pub(crate) use calls::{CallOutcome, CallTelemetry};
#[cfg(feature = "chaos")]
pub(crate) use chaos::ChaosCounters;
#[cfg(feature = "serde")]
pub(crate) use events::ReloadCounters;
pub(crate) use events::supervisor_event;
#[cfg(all(feature = "metrics", feature = "serde"))]
pub(crate) use gauges::record_gauges;
pub use listener::{Event, EventKind};
pub(crate) use listener::{Listener, ListenerPanics, tell_or_give_back};
pub(crate) use policy::PolicyTelemetry;
pub use refusals::Refusals;
