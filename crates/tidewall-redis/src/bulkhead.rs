//! A bulkhead whose permits are leases in a Redis sorted set, shared by every replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tidewall::bulkhead::{Bulkhead, Permit};
use tidewall::rt::{Runtime as _, Tokio};
use tidewall::{ConfigError, Deadline, Rejected};
use tidewall_core::rng::SplitMix64;

use crate::backend::Backend;
use crate::conn::RedisConn;
use crate::options::{Common, common_options};
use crate::policy::FailurePolicy;

/// Reaps expired leases, then admits if fewer than the limit are held. The score of a lease
/// is its expiry on Redis's clock (µs). Returns 1 when admitted, 0 when full.
const ACQUIRE: &str = r"
local limit = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + lease), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000) + 1000)
  return 1
end
return 0
";

/// Extends a lease that is still held. Returns 1, or 0 when it had already expired.
const RENEW: &str = r"
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 0 end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local lease = tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], string.format('%.0f', now + lease), ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(lease / 1000) + 1000)
return 1
";

/// At most `limit` calls at once across every replica. Each permit is a lease in a sorted
/// set: renewed in the background while held (every third of the lease), released in the
/// background when dropped. A holder that crashes stops renewing, and its permit returns
/// when the lease expires. Cheap to clone; clones share everything.
///
/// Each acquire is one round trip within the deadline (default 10 ms); when Redis does not
/// answer, the [`FailurePolicy`] decides (`Local` uses an in-process bulkhead holding its
/// share of the limit).
///
/// ```no_run
/// use std::time::Duration;
/// use tidewall_redis::{RedisBulkhead, RedisConn};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = RedisConn::open("redis://127.0.0.1:6379")?;
/// let bulkhead = RedisBulkhead::builder(&conn, "db", 20).lease(Duration::from_secs(30)).build()?;
/// let permit = bulkhead.try_acquire().await?;
/// // ... the call ...
/// drop(permit); // released in the background
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedisBulkhead {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: RedisConn,
    key: String,
    limit: u32,
    lease: Duration,
    backend: Backend,
    policy: FailurePolicy,
    local: Option<Bulkhead<Tokio>>,
    /// This instance's random prefix and a counter: every lease has its own member name.
    instance: u64,
    leases: AtomicU64,
    acquire: redis::Script,
    renew: redis::Script,
}

/// Builds a [`RedisBulkhead`]; see [`RedisBulkhead::builder`].
#[derive(Debug, Clone)]
pub struct RedisBulkheadBuilder {
    common: Common,
    limit: u32,
    lease: Duration,
}

/// A slot in a [`RedisBulkhead`]: a lease in Redis (renewed while held), or a slot of the
/// local fallback bulkhead. Dropping it releases the slot (a Redis lease in the background).
#[derive(Debug)]
pub struct RedisPermit<'a> {
    held: Held<'a>,
}

#[derive(Debug)]
enum Held<'a> {
    /// A lease in Redis, and the task renewing it.
    Lease {
        bulkhead: RedisBulkhead,
        member: String,
        renewing: tokio::task::JoinHandle<()>,
    },
    /// A slot of the local fallback, held until the permit drops.
    Local(#[allow(dead_code, reason = "held for its drop")] Permit<'a, Tokio>),
    /// Admitted without a slot (fail open).
    Unlimited,
}

impl RedisBulkhead {
    /// At most `limit` concurrent calls under `name`, on `conn`. Defaults: a 30 s lease,
    /// partition `"default"`, a 10 ms deadline per Redis call, [`FailurePolicy::Open`].
    pub fn builder(conn: &RedisConn, name: &str, limit: u32) -> RedisBulkheadBuilder {
        RedisBulkheadBuilder {
            common: Common::new(conn, name),
            limit,
            lease: Duration::from_secs(30),
        }
    }

    /// One attempt for a slot: one round trip.
    ///
    /// **Cancel safety:** dropping the future abandons the round trip; a lease Redis granted
    /// meanwhile is not renewed and returns when it expires.
    ///
    /// # Errors
    ///
    /// [`Rejected::BulkheadFull`], or [`Rejected::BackendUnavailable`] when Redis did not
    /// answer and the policy is to fail closed.
    pub async fn try_acquire(&self) -> Result<RedisPermit<'_>, Rejected> {
        let inner = &*self.inner;
        let member = format!(
            "{:016x}-{}",
            inner.instance,
            inner.leases.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = inner.conn.manager.clone();
        let mut invocation = inner.acquire.key(&inner.key);
        invocation
            .arg(inner.limit)
            .arg(micros(inner.lease))
            .arg(&member);
        match inner
            .backend
            .call(invocation.invoke_async::<i64>(&mut conn))
            .await
        {
            Ok(1) => Ok(RedisPermit {
                held: Held::Lease {
                    renewing: tokio::spawn(renew(self.clone(), member.clone())),
                    bulkhead: self.clone(),
                    member,
                },
            }),
            Ok(_) => Err(Rejected::BulkheadFull),
            Err(_) => match (&inner.policy, &inner.local) {
                (FailurePolicy::Closed, _) => Err(Rejected::BackendUnavailable),
                (FailurePolicy::Local { .. }, Some(local)) => Ok(RedisPermit {
                    held: Held::Local(local.try_acquire()?),
                }),
                _ => Ok(RedisPermit {
                    held: Held::Unlimited,
                }),
            },
        }
    }

    /// Tries for a slot until `deadline`, asking again every few milliseconds (jittered, so
    /// replicas do not ask in step).
    ///
    /// **Cancel safety:** as [`try_acquire`](Self::try_acquire).
    ///
    /// # Errors
    ///
    /// [`Rejected::DeadlineExceeded`] when no slot came free in time; otherwise as
    /// [`try_acquire`](Self::try_acquire).
    pub async fn acquire_before(&self, deadline: Deadline) -> Result<RedisPermit<'_>, Rejected> {
        let mut rng = SplitMix64::new(self.inner.instance);
        loop {
            match self.try_acquire().await {
                Err(Rejected::BulkheadFull) => {}
                done => return done,
            }
            let pause = Duration::from_micros(2_000 + rng.below_or_equal(3_000));
            if !deadline.allows(Tokio.now(), pause) {
                return Err(Rejected::DeadlineExceeded);
            }
            Tokio.sleep(pause).await;
        }
    }

    /// The key of the sorted set holding the leases.
    pub fn key(&self) -> &str {
        &self.inner.key
    }
}

/// Renews `member`'s lease every third of the lease until aborted (the permit's drop) or the
/// lease is found gone.
async fn renew(bulkhead: RedisBulkhead, member: String) {
    let inner = &*bulkhead.inner;
    loop {
        tokio::time::sleep(inner.lease / 3).await;
        let mut conn = inner.conn.manager.clone();
        let mut invocation = inner.renew.key(&inner.key);
        invocation.arg(micros(inner.lease)).arg(&member);
        if let Ok(0) = inner
            .backend
            .call(invocation.invoke_async::<i64>(&mut conn))
            .await
        {
            return; // expired (Redis was away too long): nothing left to renew
        }
    }
}

impl Drop for RedisPermit<'_> {
    fn drop(&mut self) {
        if let Held::Lease {
            bulkhead,
            member,
            renewing,
        } = &mut self.held
        {
            renewing.abort();
            let (bulkhead, member) = (bulkhead.clone(), std::mem::take(member));
            // Released in the background: a drop must not wait on the network. If Redis is
            // away, the lease expires on its own.
            tokio::spawn(async move {
                let inner = &*bulkhead.inner;
                let mut conn = inner.conn.manager.clone();
                let mut release = redis::cmd("ZREM");
                release.arg(&inner.key).arg(&member);
                let _ = inner
                    .backend
                    .call(release.query_async::<i64>(&mut conn))
                    .await;
            });
        }
    }
}

impl RedisPermit<'_> {
    /// Whether the slot is a Redis lease (not the local fallback, nor fail-open).
    pub fn is_shared(&self) -> bool {
        matches!(self.held, Held::Lease { .. })
    }
}

impl RedisBulkheadBuilder {
    /// How long a lease lasts without renewal (default 30 s): how soon a crashed holder's
    /// slot returns.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    common_options!();

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// A zero limit, lease or deadline, a lease under 3 ms (renewed every third), a local
    /// share outside (0, 1], an empty name.
    pub fn build(self) -> Result<RedisBulkhead, ConfigError> {
        if self.limit == 0 {
            return Err(ConfigError::Zero { field: "limit" });
        }
        if self.lease < Duration::from_millis(3) {
            return Err(ConfigError::OutOfRange {
                field: "lease",
                value: self.lease.as_secs_f64(),
                allowed: "at least 3 ms",
            });
        }
        let key = self.common.validated_key("bulkhead")?;
        let local = match self.common.policy {
            FailurePolicy::Local { share } => {
                let slots = crate::rate::share_of(self.limit, share)?;
                Some(
                    Bulkhead::builder(usize::try_from(slots).unwrap_or(usize::MAX))
                        .runtime(Tokio)
                        .build()?,
                )
            }
            FailurePolicy::Open | FailurePolicy::Closed => None,
        };
        let instance = random_id();
        Ok(RedisBulkhead {
            inner: Arc::new(Inner {
                key,
                conn: self.common.conn,
                limit: self.limit,
                lease: self.lease,
                backend: Backend::new(self.common.deadline)?,
                policy: self.common.policy,
                local,
                instance,
                leases: AtomicU64::new(0),
                acquire: redis::Script::new(ACQUIRE),
                renew: redis::Script::new(RENEW),
            }),
        })
    }
}

/// An id that differs between processes and between calls in one process.
pub(crate) fn random_id() -> u64 {
    SplitMix64::new(seed()).next_u64()
}

/// A seed that differs between processes and between calls in one process.
fn seed() -> u64 {
    static BUILT: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    now ^ (u64::from(std::process::id()) << 32) ^ BUILT.fetch_add(1, Ordering::Relaxed)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl tidewall::pipeline::Admission for RedisBulkhead {
    type Guard<'a> = RedisPermit<'a>;

    /// Never decides without Redis: [`admit`](Self::admit) does the round trip.
    fn try_admit(&self) -> Result<Option<RedisPermit<'_>>, Rejected> {
        Ok(None)
    }

    fn admit(
        &self,
        deadline: Deadline,
    ) -> impl std::future::Future<Output = Result<RedisPermit<'_>, Rejected>> + Send {
        self.acquire_before(deadline)
    }
}
