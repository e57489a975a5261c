//! A bulkhead whose permits are leases in a Redis sorted set, shared by every replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tidewall::admission::{Admission, Wait};
use tidewall::rt::{Clock as _, Tokio, instant_after};
use tidewall::telemetry::Refusals;
use tidewall::{ConfigError, Deadline, Rejected};
use tidewall_core::rng::SplitMix64;

use crate::backend::{Backend, LAST_TRY, Unavailable};
use crate::conn::RedisConn;
use crate::options::{Common, common_options};
use crate::policy::WhenUnavailable;
use crate::start::{ConnectError, fresh_probe_key, probe};

/// Admits if fewer than the limit of leases are live, then reaps the expired ones. The score
/// of a lease is its expiry on Redis's clock (µs). Returns 1 when admitted, 0 when full.
/// The lease is its first write: Redis refuses a script for `OOM` only before it has written,
/// so on a full Redis an acquire is refused (and the failure policy decides) rather than
/// taking a lease past `maxmemory` behind a reap.
const ACQUIRE: &str = r"
local limit = tonumber(ARGV[1])
local lease = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local stamp = string.format('%.0f', now)
local admitted = redis.call('ZCOUNT', KEYS[1], '(' .. stamp, '+inf') < limit
if admitted then
  redis.call('ZADD', KEYS[1], string.format('%.0f', now + lease), ARGV[3])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', stamp)
if admitted then
  local keep = math.ceil(lease / 1000) + 1000
  if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
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
local keep = math.ceil(lease / 1000) + 1000
if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
return 1
";

/// At most `limit` calls at once across every replica. Each permit is a lease in a sorted
/// set: renewed in the background while held (every third of the lease, each renewal within
/// the deadline, and sent even while the breaker around Redis is open, so that a breaker
/// opened by slow acquires does not let a held lease lapse), released in the background when
/// dropped. A holder that crashes stops renewing, and its permit returns when the lease
/// expires. A renewal that goes unanswered is tried again a twentieth of the lease after it
/// ended, and so on until the lease has run out on this replica's clock (counted from when
/// the last answered renewal, or the acquire, was sent); then every third of the lease
/// again. So a held lease lapses only when Redis stays unreachable until less than a
/// twentieth of the lease and one deadline (plus a reconnection) is left of it: an outage of
/// about 28 s with the defaults (a 30 s lease, a 10 ms deadline). Once Redis answers that the
/// lease is gone, renewing stops while the permit is held, and the limit may be overshot by
/// it until it drops. Keep the lease many deadlines long. Cheap to clone; clones share
/// everything.
///
/// The renewals and the release run as tasks on the tokio runtime the permit was acquired
/// on, and end with it: a permit dropped as that runtime shuts down (at the end of
/// `#[tokio::main]`, say) may not be released, and holds its slot until its lease expires
/// (30 s by default), and one held past its runtime's end is no longer renewed, so its lease
/// lapses while it is held. Drop permits, and let their releases run, before the runtime
/// ends.
///
/// Each acquire is one round trip within the deadline (default 10 ms); when Redis does not
/// answer, the [`WhenUnavailable`] decides (`Local` uses an in-process bulkhead holding its
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
    /// Where [`verify`](RedisBulkhead::verify) runs the scripts (with a suffix of its own).
    probe_key: String,
    limit: u32,
    lease: Duration,
    backend: Backend,
    policy: WhenUnavailable,
    /// The slots of [`WhenUnavailable::Local`]'s share: tried, never waited for, and never
    /// reported on their own (the limit counts its answer).
    local: Option<Arc<tokio::sync::Semaphore>>,
    /// This instance's random prefix and a counter: every lease has its own member name.
    instance: u64,
    leases: AtomicU64,
    acquire: redis::Script,
    renew: redis::Script,
    /// Counts this limit's answers that refuse (`redis_bulkhead`).
    refusals: Refusals,
}

/// Builds a [`RedisBulkhead`]; see [`RedisBulkhead::builder`].
#[derive(Debug, Clone)]
pub struct RedisBulkheadBuilder {
    common: Common,
    limit: u32,
    lease: Duration,
}

/// A slot in a [`RedisBulkhead`]: a lease in Redis (renewed while held), or a slot of the
/// local fallback bulkhead. Dropping it releases the slot (a Redis lease in the background,
/// on the runtime it was acquired on, while that one runs: see [`RedisBulkhead`]).
#[derive(Debug)]
pub struct RedisPermit {
    held: Held,
}

#[derive(Debug)]
enum Held {
    /// A lease in Redis, and the task renewing it (none outside a tokio runtime: the lease
    /// then lapses after its term).
    Lease {
        bulkhead: RedisBulkhead,
        member: String,
        renewing: Option<tokio::task::JoinHandle<()>>,
        runtime: Option<tokio::runtime::Handle>,
    },
    /// A slot of the local fallback, held until the permit drops.
    Local(#[allow(dead_code, reason = "held for its drop")] tokio::sync::OwnedSemaphorePermit),
    /// Admitted without a slot (fail open).
    Unlimited,
}

impl RedisBulkhead {
    /// At most `limit` concurrent calls under `name`, on `conn`. Defaults: a 30 s lease,
    /// partition `"default"`, a 10 ms deadline per Redis call, [`WhenUnavailable::Open`].
    pub fn builder(conn: &RedisConn, name: &str, limit: u32) -> RedisBulkheadBuilder {
        RedisBulkheadBuilder {
            common: Common::new(conn, name),
            limit,
            lease: Duration::from_secs(30),
        }
    }

    /// Checks at start-up that this limit can work: loads its scripts, then takes, renews and
    /// releases one lease on a key of its own (under its own hash tag, so on the Cluster node
    /// that holds its state; its kind begins `%probe:`, which no real key's does), so a user that may not load or run them, run a command they call
    /// (`TIME`, `ZCOUNT`, `ZADD`, `ZREMRANGEBYSCORE`, `ZSCORE`, `PTTL`, `PEXPIRE`), release a
    /// lease (`ZREM`) or touch its keys is reported now, not met by the failure policy on
    /// every call. The limit itself is not touched.
    ///
    /// **Cancel safety:** dropping it abandons the probe; a probe lease left behind expires
    /// within a second.
    ///
    /// ```no_run
    /// use tidewall_redis::{RedisBulkhead, RedisConn};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = RedisConn::builder("redis://127.0.0.1:6379").connect().await?;
    /// let bulkhead = RedisBulkhead::builder(&conn, "db", 20).build()?;
    /// bulkhead.verify().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`RedisRateLimiter::verify`](crate::RedisRateLimiter::verify).
    pub async fn verify(&self) -> Result<(), ConnectError> {
        let inner = &*self.inner;
        let mut conn = inner.conn.connection();
        for script in [&inner.acquire, &inner.renew] {
            probe(script.prepare_invoke().load_async(&mut conn), None).await?;
        }
        let member = format!(
            "{:016x}-probe-{}",
            inner.instance,
            inner.leases.fetch_add(1, Ordering::Relaxed)
        );
        // A one-second lease in a new set: granted, so every command of both scripts runs.
        let key = fresh_probe_key(&inner.probe_key);
        let lease_us = 1_000_000_u64;
        let mut acquire = inner.acquire.key(&key);
        acquire.arg(1).arg(lease_us).arg(&member);
        let granted = probe(acquire.invoke_async::<i64>(&mut conn), Some(ACQUIRE)).await?;
        let mut renew = inner.renew.key(&key);
        renew.arg(lease_us).arg(&member);
        let renewed = probe(renew.invoke_async::<i64>(&mut conn), Some(RENEW)).await?;
        if (granted, renewed) != (1, 1) {
            return Err(ConnectError::Redis {
                reason: format!(
                    "the probe lease was not granted and renewed (replies {granted} and {renewed})"
                ),
            });
        }
        let mut remove = redis::cmd("ZREM");
        remove.arg(&key).arg(&member);
        probe(remove.query_async::<i64>(&mut conn), None).await?;
        Ok(())
    }

    /// One attempt for a slot: one round trip. Must run inside a tokio runtime (the renewal
    /// and the release run on it).
    ///
    /// **Cancel safety:** dropping the future (or a timeout) after the request left releases
    /// the lease Redis may have granted meanwhile: a `ZREM` follows the acquire on the same
    /// connection, so Redis runs it second.
    ///
    /// # Errors
    ///
    /// [`Rejected::BulkheadFull`], or [`Rejected::BackendUnavailable`] when Redis did not
    /// answer and the policy is to fail closed.
    pub async fn try_acquire(&self) -> Result<RedisPermit, Rejected> {
        let answer = self.try_acquire_within(None).await;
        self.inner.refusals.counted(answer)
    }

    /// [`try_acquire`](Self::try_acquire) with the round trip also cut short at `cap` (what
    /// is left of the caller's deadline; zero: see [`Backend::call_within`]: 1 ms, and
    /// whatever is not an answer is [`Rejected::DeadlineExceeded`]).
    async fn try_acquire_within(&self, cap: Option<Duration>) -> Result<RedisPermit, Rejected> {
        let inner = &*self.inner;
        let runtime = tokio::runtime::Handle::try_current().ok();
        let member = format!(
            "{:016x}-{}",
            inner.instance,
            inner.leases.fetch_add(1, Ordering::Relaxed)
        );
        // Released unless disarmed: covers a timeout and a dropped future alike.
        let mut pending = PendingLease {
            bulkhead: self,
            member: Some(member.clone()),
            runtime: runtime.clone(),
        };
        let mut conn = inner.conn.connection();
        let asked = Tokio.now();
        let mut invocation = inner.acquire.key(&inner.key);
        invocation
            .arg(inner.limit)
            .arg(micros(inner.lease))
            .arg(&member);
        let reply = inner
            .backend
            .call_within(invocation.invoke_async::<i64>(&mut conn), cap)
            .await;
        if matches!(reply, Ok(_) | Err(Unavailable::BreakerOpen)) {
            // Redis answered (or was never asked): nothing is left behind.
            pending.member = None;
        }
        match reply {
            Ok(1) => Ok(RedisPermit {
                held: Held::Lease {
                    renewing: runtime
                        .as_ref()
                        .map(|rt| rt.spawn(renew(self.clone(), member.clone(), asked))),
                    bulkhead: self.clone(),
                    member,
                    runtime,
                },
            }),
            Ok(_) => Err(Rejected::BulkheadFull),
            // The caller's deadline passed first: the lease, if granted, is released.
            Err(Unavailable::CallerDeadline) => Err(Rejected::DeadlineExceeded),
            // Past its deadline, a caller is not answered by the failure policy.
            Err(_) if cap.is_some_and(|cap| cap.is_zero()) => Err(Rejected::DeadlineExceeded),
            Err(_) => match (&inner.policy, &inner.local) {
                (WhenUnavailable::Closed, _) => Err(Rejected::BackendUnavailable),
                (WhenUnavailable::Local { .. }, Some(local)) => Arc::clone(local)
                    .try_acquire_owned()
                    .map(|slot| RedisPermit {
                        held: Held::Local(slot),
                    })
                    .map_err(|_| Rejected::BulkheadFull),
                _ => Ok(RedisPermit {
                    held: Held::Unlimited,
                }),
            },
        }
    }

    /// Tries for a slot until `deadline`, asking again every few milliseconds (jittered, so
    /// replicas do not ask in step). Every try is cut short at what is left of `deadline`;
    /// the last is made about 1 ms before it, never at or after it.
    ///
    /// A `deadline` that has already passed gets one try, as
    /// [`try_acquire`](Self::try_acquire), with one round trip of at most 1 ms (a healthy
    /// Redis on a local network answers within it, once connected: the first call on a new
    /// connection also connects and loads the script), and is then refused: if Redis does not
    /// answer that try in time (or its breaker around Redis is open), with
    /// [`Rejected::DeadlineExceeded`], never by the failure policy.
    ///
    /// **Cancel safety:** as [`try_acquire`](Self::try_acquire).
    ///
    /// # Errors
    ///
    /// [`Rejected::DeadlineExceeded`] when no slot came free in time, or Redis has not
    /// answered by the deadline (then a lease it may have granted is released), or for a
    /// deadline already passed that Redis did not answer within 1 ms; otherwise as
    /// [`try_acquire`](Self::try_acquire).
    pub async fn acquire_before(&self, deadline: Deadline) -> Result<RedisPermit, Rejected> {
        let answer = self.acquire_before_uncounted(deadline).await;
        self.inner.refusals.counted(answer)
    }

    /// [`acquire_before`](Self::acquire_before), its refusal not counted yet.
    async fn acquire_before_uncounted(&self, deadline: Deadline) -> Result<RedisPermit, Rejected> {
        // Seeded per call, so the waiters of one replica do not retry in step.
        let mut rng = SplitMix64::new(random_id());
        let mut first = true;
        loop {
            // The round trip never runs past what is left of the caller's deadline. Only the
            // first try may find it passed (a late wake-up is not another try).
            let left = deadline.remaining(Tokio.now());
            if !first && left.is_some_and(|left| left.is_zero()) {
                return Err(Rejected::DeadlineExceeded);
            }
            first = false;
            match self.try_acquire_within(left).await {
                Err(Rejected::BulkheadFull) => {}
                done => return done,
            }
            let pause = Duration::from_micros(2_000 + rng.below_or_equal(3_000));
            match deadline.remaining(Tokio.now()) {
                // No time for another try to be answered.
                Some(left) if left <= LAST_TRY => return Err(Rejected::DeadlineExceeded),
                // The last pause ends early enough for one more try.
                Some(left) => Tokio.sleep(pause.min(left - LAST_TRY)).await,
                None => Tokio.sleep(pause).await,
            }
        }
    }

    /// The key of the sorted set holding the leases.
    pub fn key(&self) -> &str {
        &self.inner.key
    }
}

/// Renews `member`'s lease, granted by an acquire sent at `asked`, every third of the lease
/// until aborted (the permit's drop) or the lease is found gone; an unanswered renewal is
/// tried again every twentieth of the lease while the lease may still be held. Past the
/// breaker around Redis: an open breaker must not let a held lease lapse while Redis
/// answers.
async fn renew(bulkhead: RedisBulkhead, member: String, asked: Instant) {
    let inner = &*bulkhead.inner;
    // Redis stamps a lease when the request arrives, after it was sent: counted from the
    // sending, the lease ends here no later than it does in Redis.
    let mut lapses_at = instant_after(asked, inner.lease);
    let mut pause = inner.lease / 3;
    loop {
        tokio::time::sleep(pause).await;
        let sent = Tokio.now();
        let mut conn = inner.conn.connection();
        let mut invocation = inner.renew.key(&inner.key);
        invocation.arg(micros(inner.lease)).arg(&member);
        match inner
            .backend
            .call_past_breaker(invocation.invoke_async::<i64>(&mut conn))
            .await
        {
            Ok(0) => return, // expired (Redis was away too long): nothing left to renew
            Ok(_) => {
                lapses_at = instant_after(sent, inner.lease);
                pause = inner.lease / 3;
            }
            // Waiting a whole third again could outlast the lease: try again soon while it
            // may still be held.
            Err(_) if Tokio.now() < lapses_at => pause = inner.lease / 20,
            Err(_) => pause = inner.lease / 3,
        }
    }
}

impl Drop for RedisPermit {
    fn drop(&mut self) {
        if let Held::Lease {
            bulkhead,
            member,
            renewing,
            runtime,
        } = &mut self.held
        {
            if let Some(renewing) = renewing {
                renewing.abort();
            }
            release(bulkhead, std::mem::take(member), runtime.as_ref());
        }
    }
}

/// A lease asked for whose answer never came: released when dropped, unless disarmed.
struct PendingLease<'a> {
    bulkhead: &'a RedisBulkhead,
    member: Option<String>,
    runtime: Option<tokio::runtime::Handle>,
}

impl Drop for PendingLease<'_> {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            release(self.bulkhead, member, self.runtime.as_ref());
        }
    }
}

/// Removes `member`'s lease in the background on `runtime` (a drop must not wait on the
/// network), outside the breaker (a release is worth trying even when Redis looked down),
/// within one second, once more if that fails. Without a runtime, or if Redis stays away,
/// the lease expires on its own.
fn release(bulkhead: &RedisBulkhead, member: String, runtime: Option<&tokio::runtime::Handle>) {
    let Some(runtime) = runtime else { return };
    let bulkhead = bulkhead.clone();
    runtime.spawn(async move {
        let inner = &*bulkhead.inner;
        for _ in 0..2 {
            let mut conn = inner.conn.connection();
            let mut remove = redis::cmd("ZREM");
            remove.arg(&inner.key).arg(&member);
            let removed =
                tokio::time::timeout(Duration::from_secs(1), remove.query_async::<i64>(&mut conn));
            if matches!(removed.await, Ok(Ok(_))) {
                return;
            }
        }
    });
}

impl RedisPermit {
    /// Whether the slot is a Redis lease (not the local fallback, nor fail-open).
    pub fn is_shared(&self) -> bool {
        matches!(self.held, Held::Lease { .. })
    }
}

impl RedisBulkheadBuilder {
    /// How long a lease lasts without renewal (default 30 s): how soon a crashed holder's
    /// slot returns. From 3 ms (it is renewed every third) to 2^50 µs (about 35 years: the
    /// scripts add it to Redis's clock in Lua doubles), counted in whole µs. A lease not many
    /// times the deadline can lapse while held after one or two slow renewals (see
    /// [`RedisBulkhead`]).
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
    /// [`ConfigError::Zero`] for a zero limit, lease or deadline, or an empty name;
    /// [`ConfigError::OutOfRange`] for a lease under 3 ms (renewed every third) or over
    /// 2^50 µs, or a local share outside (0, 1] (or, on a 32-bit target, of more slots than
    /// tokio's `Semaphore::MAX_PERMITS`); [`ConfigError::DurationOverflow`] for a lease
    /// or deadline beyond `u64::MAX` nanoseconds.
    pub fn build(self) -> Result<RedisBulkhead, ConfigError> {
        if self.limit == 0 {
            return Err(ConfigError::Zero { field: "limit" });
        }
        if self.lease.is_zero() {
            return Err(ConfigError::Zero { field: "lease" });
        }
        const ALLOWED: &str = "from 3 ms to 2^50 µs (about 35 years)";
        if self.lease < Duration::from_millis(3) {
            return Err(ConfigError::OutOfRange {
                field: "lease",
                value: self.lease.as_secs_f64(),
                allowed: ALLOWED,
            });
        }
        // Whole µs on Redis's clock; from 3 ms up, that rounding is under 0.04 %.
        crate::options::script_micros("lease", self.lease, ALLOWED)?;
        let key = self.common.validated_key("bulkhead")?;
        let local = match self.common.policy {
            WhenUnavailable::Local { share } => {
                let slots = crate::rate::share_of(self.limit, share)?;
                let slots = usize::try_from(slots)
                    .ok()
                    .filter(|&slots| slots <= tokio::sync::Semaphore::MAX_PERMITS)
                    .ok_or(ConfigError::OutOfRange {
                        field: "limit",
                        value: f64::from(self.limit),
                        allowed: "a local share of at most tokio's Semaphore::MAX_PERMITS slots",
                    })?;
                Some(Arc::new(tokio::sync::Semaphore::new(slots)))
            }
            WhenUnavailable::Open | WhenUnavailable::Closed => None,
        };
        let instance = random_id();
        Ok(RedisBulkhead {
            inner: Arc::new(Inner {
                key,
                probe_key: self.common.probe_key("bulkhead"),
                conn: self.common.conn,
                limit: self.limit,
                lease: self.lease,
                backend: Backend::new(self.common.deadline, "bulkhead", &self.common.name)?,
                policy: self.common.policy,
                local,
                instance,
                leases: AtomicU64::new(0),
                acquire: redis::Script::new(ACQUIRE),
                renew: redis::Script::new(RENEW),
                refusals: Refusals::new(
                    "redis_bulkhead",
                    self.common.name,
                    &[
                        Rejected::BulkheadFull,
                        Rejected::BackendUnavailable,
                        Rejected::DeadlineExceeded,
                    ],
                ),
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

/// The future of [`RedisBulkhead`]'s [`Admission::admit`]: boxed, as the round trip it
/// waits on costs far more than the allocation.
pub type RedisAdmit<G> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<G, Rejected>> + Send>>;

impl Admission for RedisBulkhead {
    type Guard = RedisPermit;
    type Admit = RedisAdmit<RedisPermit>;

    /// Never decides without Redis: [`admit`](Admission::admit) does the round trip.
    fn try_admit(&self) -> Option<RedisPermit> {
        None
    }

    /// Under [`Wait::No`] one round trip ([`try_acquire`](RedisBulkhead::try_acquire)),
    /// under [`Wait::Until`] [`acquire_before`](RedisBulkhead::acquire_before).
    fn admit(&self, wait: Wait) -> Self::Admit {
        let bulkhead = self.clone();
        Box::pin(async move {
            match wait {
                Wait::Until(deadline) => bulkhead.acquire_before(deadline).await,
                _ => bulkhead.try_acquire().await,
            }
        })
    }
}
