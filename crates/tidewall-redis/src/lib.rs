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
//!   semantics as the in-process limiter. A denial is remembered locally until it expires,
//!   or for at most [`RedisRateLimiter::DENIAL_RECHECK`] (1 s), so repeated denials cost no
//!   round trip. The remembered wait is never too long: GCRA's stored state only moves later,
//!   except when a replica in lease mode gives cells back, and those reach the others within
//!   the recheck. It is forgotten when this instance admits a cell.
//! * [`RedisBulkhead`]: permits are leases in a sorted set (expired ones reaped, admitted
//!   below the limit), renewed while held and released in the background on drop; a crashed
//!   holder's permit returns when its lease expires.
//! * [`BreakerQuorum`]: circuit breakers stay per instance; this advisory layer opens the
//!   local breaker when a quorum of instances report theirs open, refreshed on a timer so
//!   Redis is never on a call's path.
//! * Every Redis call has its own deadline (default 10 ms), and every call a decision waits on
//!   goes through a circuit breaker around Redis itself: no decision ever waits longer than
//!   its deadline, whatever Redis does. (A leased bulkhead's background renewals and releases
//!   go past the breaker: nobody waits on them, and a held lease must not lapse.)
//!   When Redis does not answer in time, or answers with an error (an `OOM` from a full
//!   Redis, a `NOPERM` after an ACL change, a `READONLY` from a demoted master), the limit's
//!   [`WhenUnavailable`] decides: admit, refuse, or fall back to a local limiter holding a
//!   configured share of the global limit. So under the default (`Open`), a Redis that
//!   refuses every command admits everything: watch the breaker's metrics below, or choose
//!   `Closed` or `Local`.
//! * With tidewall's `metrics` or `tracing` feature, each limit's breaker around Redis
//!   reports as a breaker named `redis:<kind>:<name>` (`rate`, `bulkhead` or `quorum`, and
//!   the limit's name, as given; the partitions of one name share it): its calls by outcome,
//!   its transitions, and its refusals while open (`circuit_open`), counted even when the
//!   policy then admits. A limit's own refusals count as Tidewall's in-process limits' do,
//!   in `tidewall_rejections_total{policy, name, reason}` and a debug event `call rejected`,
//!   with `policy` `redis_rate` or `redis_bulkhead` and `name` the limit's name (partitions
//!   share it): each answer that refuses, whatever decided it (Redis, a remembered denial,
//!   lease mode's local cells, [`WhenUnavailable::Closed`] as `backend_unavailable`, or the
//!   `Local` share), once per call (a wait that asks again counts only its final answer);
//!   the `Local` share reports nothing of its own. The series of every reason a limit can
//!   give are registered, at zero, when it is built: `rate_limited`,
//!   `insufficient_capacity`, `deadline_exceeded` and `backend_unavailable` for a rate
//!   limiter; `bulkhead_full`, `deadline_exceeded` and `backend_unavailable` for a bulkhead.
//! * **Memory.** Every key a limit writes has an expiry, which makes it a candidate for
//!   eviction under a `volatile-*` (and any `allkeys-*`) `maxmemory-policy`: an evicted rate
//!   key gives a whole burst again, and an evicted bulkhead set forgets every lease held, so
//!   the limit is exceeded until those holders let go. Give the limits a Redis that never
//!   evicts their keys: `maxmemory-policy noeviction` (a full Redis then answers `OOM`, and
//!   the failure policy decides: a bulkhead's acquire too, as its lease is its first write;
//!   one that finds the bulkhead full takes no lease, and is refused as full), or memory to
//!   spare. Under the default [`WhenUnavailable::Open`] a full Redis admits every call the
//!   limits would have decided: choose `Closed` or `Local` where that is worse than a
//!   refusal. A held lease's renewal is refused alike, and tried again (see
//!   [`RedisBulkhead`]); its release is not refused.
//! * Keys are `tidewall:v1:{<name>:<partition>}:<kind>`: a format version, and a Redis Cluster
//!   hash tag so everything one limit touches lives in one slot.
//!
//! # Start-up: TLS, ACL users, and errors found before the first call
//!
//! A limit whose Redis refuses its password would otherwise apply its failure policy on every
//! call, forever: failing open without a word. So check at start-up, and stop there:
//!
//! 1. [`RedisConn::builder`] and [`connect`](RedisConnBuilder::connect) reach Redis now and
//!    report a [`ConnectError`]: [`Unreachable`](ConnectError::Unreachable),
//!    [`Tls`](ConnectError::Tls) (a certificate not trusted or not for the host, a client
//!    certificate missing), [`Authentication`](ConnectError::Authentication) (a wrong user or
//!    password), [`InvalidSettings`](ConnectError::InvalidSettings).
//! 2. Each limit's `verify` ([`RedisRateLimiter::verify`], [`RedisBulkhead::verify`],
//!    [`BreakerQuorum::verify`]) loads its scripts and runs them once on probe keys under its
//!    own hash tag (name and partition, so on the Cluster node that holds its state): a [`Permission`](ConnectError::Permission) error names the command
//!    (or the key) the user may not use.
//!
//! `rediss://` URLs need the `tls` feature (rustls); trust a private certificate authority with
//! [`tls_root_certificate`](RedisConnBuilder::tls_root_certificate) and present a client
//! certificate with [`tls_client_certificate`](RedisConnBuilder::tls_client_certificate).
//! The ACL rule for a user that may do exactly what Tidewall does, on Tidewall's keys only:
//!
//! ```text
//! user tidewall on >PASSWORD resetkeys ~tidewall:* resetchannels -@all +evalsha +script|load
//!   +zrem +time +get +set +zremrangebyscore +zcount +zcard +zadd +zscore +pttl +pexpire
//! ```
//!
//! (one line in `users.acl` or `redis.conf`; narrow `~tidewall:*` to
//! `~tidewall:v1:{NAME:*` for one limit's keys, with `NAME` as it appears in the limit's
//! [`key`](RedisRateLimiter::key): `%`, `:`, `{` and `}` in names and partitions are written
//! `%25`, `%3A`, `%7B` and `%7D`). The tests run every limit as this user over
//! TLS, and every missing piece as a typed error.
//!
//! That rule is for one server at database 0. The connection itself needs more elsewhere:
//! add `+select` for a URL that names another database (`redis://host/3`: the connection
//! sends `SELECT`), and `+cluster|slots +ping` on a Redis Cluster (redis-rs's cluster client
//! reads the slot map with `CLUSTER SLOTS` when it connects and after `MOVED` or a failover,
//! and cannot route a command without it; it sends `PING` to each node it connects to, and
//! checks each connection it keeps with `PING` when it refreshes the slot map: denied, that
//! check fails and every refresh reconnects to every node). The tests do not run the rule
//! on a cluster.
//!
//! ```no_run
//! use std::time::Duration;
//! use tidewall_redis::{RedisConn, RedisRateLimiter};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let conn = RedisConn::builder("redis://redis.internal:6379")
//!     .username("tidewall")
//!     .password(std::env::var("REDIS_PASSWORD")?)
//!     .connect()
//!     .await?;
//! let limiter = RedisRateLimiter::builder(&conn, "api", 100, Duration::from_secs(1)).build()?;
//! limiter.verify().await?;
//! # Ok(()) }
//! ```
//!
//! # Lease mode for hot limits
//!
//! Exact mode decides every cell with a round trip, so a replica decides at the round-trip
//! rate (about 10 000 a second from one task here). With
//! [`lease_mode`](RedisRateLimiterBuilder::lease_mode) each replica takes cells from the same
//! GCRA state a batch at a time and spends them with an atomic, fetching the next batch in
//! the background: millions of decisions a second per replica, Redis asked once per batch.
//! The price is bounded: over any window the fleet admits at most the exact limit (stretched
//! by one round trip) plus `replicas × max_batch` ([`LeaseMode`] says why, and how the batch
//! adapts). Exact and lease replicas can share one limit. Give unspent cells back on shutdown
//! with [`return_unspent`](RedisRateLimiter::return_unspent).
//!
//! # Redis Cluster
//!
//! [`RedisConn::cluster_builder`] connects to a Redis Cluster through redis-rs's cluster
//! client; every limit works on it unchanged (its ACL user needs `+cluster|slots` and
//! `+ping` besides the rule above). All the keys of one limit and partition share a hash tag, so each
//! decision is one script on one slot's master, and different names spread over the slots
//! and so over the masters. The client follows `MOVED` and `ASK` (a slot
//! migrated while in use keeps every limit exact: the tests move one key at a time), and
//! after a failover it finds the promoted replica (retries wait 5 ms doubling to 500 ms).
//!
//! **What a failover does.** While a master is gone (Redis notices after
//! `cluster-node-timeout`, then elects its replica: decisions again 2.4–3.0 s after the
//! kill in the failover runs of docs/BENCHMARKS.md, with a 1 s timeout), each decision on
//! its slots still returns within its deadline, decided by
//! [`WhenUnavailable`]. **What it can lose:** Redis replicates asynchronously, so writes the
//! dead master acknowledged but had not yet sent to its replica are gone: for the rate
//! limiter, cells it admitted (the promoted replica may admit them again, at most as many as
//! were lost); for the bulkhead, leases it granted (the limit may be overshot by as many,
//! until those permits are dropped); for the quorum, reports, which the next refresh rewrites.
//! Measured on loopback (`cargo bench -p tidewall-redis --bench cluster`): 0 leases lost of
//! 5,795–8,836 granted in the second before each of six SIGKILLed masters; a busy network or
//! replica widens the window. Nothing is lost in a manual failover (`CLUSTER FAILOVER`: the
//! replica catches up first), which the tests check too.
//!
//! **Clocks.** Every script reads the time of the master that runs it (`TIME`) and stores
//! absolute instants: the rate limiter's theoretical arrival times, the bulkhead's lease
//! expiries, the quorum's report expiries. A failover to a replica whose clock differs from
//! the old master's by X (or a step of the master's clock) shifts them all by X: behind, the
//! rate limiter refuses for up to X longer than it should; ahead, it may admit up to a burst
//! early, and the bulkhead reaps leases with less than X to run (their holders keep running
//! uncounted, so the limit may be overshot by as many until they drop), and the quorum
//! forgets reports early. Keep the Redis nodes on NTP: the error is bounded by their skew.
//!
//! Built on redis-rs's reconnecting `ConnectionManager` (one multiplexed connection, TCP_NODELAY
//! on) or its cluster client, so it runs on tokio. Needs Redis 7 or later: the scripts read `TIME` before they write,
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
mod lease;
mod options;
mod policy;
mod quorum;
mod rate;
mod start;

pub use bulkhead::{RedisAdmit, RedisBulkhead, RedisBulkheadBuilder, RedisPermit};
pub use conn::{RedisConn, RedisConnBuilder};
pub use lease::LeaseMode;
pub use policy::WhenUnavailable;
pub use quorum::{BreakerQuorum, BreakerQuorumBuilder, QuorumUnavailable, QuorumView, Refreshing};
pub use rate::{RedisRateLimiter, RedisRateLimiterBuilder};
pub use start::ConnectError;
