//! Tidewall's limits shared through Redis, for services that run as many replicas.
//!
//! A per-process limit multiplies with the replica count: ten replicas each allowing 100
//! requests a second allow 1000. The types here keep one limit's state in Redis instead, and
//! implement the same [`Admission`](tidewall::admission::Admission) trait as the in-process
//! [`RateLimiter`](tidewall::rate::RateLimiter) and [`Bulkhead`](tidewall::bulkhead::Bulkhead),
//! so a [`Pipeline`](tidewall::pipeline::Pipeline) or an
//! [`AdmitLayer`](tidewall::tower::AdmitLayer) takes them unchanged. The in-process types stay
//! the default; reach for these only when the limit must be global.
//!
//! * [`RedisRateLimiter`]: GCRA in a Lua script that reads Redis's own clock (`TIME`), one key
//!   per limit and partition, run with `EVALSHA` (reloaded on `NOSCRIPT`). The same burst
//!   semantics as the in-process limiter. A denial is remembered locally until it expires, so
//!   repeated denials cost no round trip. That is exact for GCRA: the stored state only ever
//!   moves later, so the remembered wait is never too long (it is forgotten when this
//!   instance admits a cell).
//! * [`RedisBulkhead`]: permits are leases in a sorted set (expired ones reaped, admitted
//!   below the limit), renewed while held and released in the background on drop; a crashed
//!   holder's permit returns when its lease expires.
//! * [`BreakerQuorum`]: circuit breakers stay per instance; this advisory layer opens the
//!   local breaker when a quorum of instances report theirs open, refreshed on a timer so
//!   Redis is never on a call's path.
//! * Every Redis call has its own deadline (default 10 ms) and goes through a circuit breaker
//!   around Redis itself: no decision ever waits longer than its deadline, whatever Redis does.
//!   When Redis does not answer, the limit's [`WhenUnavailable`] decides: admit, refuse, or fall
//!   back to a local limiter holding a configured share of the global limit.
//! * Keys are `tidewall:v1:{<name>:<partition>}:<kind>`: a format version, and a Redis Cluster
//!   hash tag so everything one limit touches lives in one slot.
//!
//! Built on redis-rs's reconnecting `ConnectionManager` (one multiplexed connection, TCP_NODELAY
//! on), so it runs on tokio. Needs Redis 7 or later: the scripts read `TIME` before they write,
//! which relies on effects replication (the only mode since Redis 7).
#![forbid(unsafe_code)]
// On docs.rs, `doc_cfg` labels any feature- or platform-gated item with what it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
#[cfg(test)]
mod builder_tests;
mod bulkhead;
mod conn;
mod keys;
mod options;
mod policy;
mod quorum;
mod rate;

pub use bulkhead::{RedisAdmit, RedisBulkhead, RedisBulkheadBuilder, RedisPermit};
pub use conn::RedisConn;
pub use policy::WhenUnavailable;
pub use quorum::{BreakerQuorum, BreakerQuorumBuilder, QuorumUnavailable, QuorumView, Refreshing};
pub use rate::{RedisRateLimiter, RedisRateLimiterBuilder};
