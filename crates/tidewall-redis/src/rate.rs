//! The GCRA rate limiter whose state lives in Redis.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tidewall_core::rng::SplitMix64;

use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock as _, Tokio};
use tidewall::{ConfigError, Deadline, Rejected};
use tidewall_core::gcra::{Gcra, Resolution, emission_interval};

use crate::backend::{Backend, Unavailable};
use crate::conn::RedisConn;
use crate::lease::{LeaseMode, Leased};
use crate::options::{Common, common_options};
use crate::policy::WhenUnavailable;
use crate::start::{ConnectError, fresh_probe_key, probe};

/// GCRA on Redis's clock, in whole microseconds (`TIME`; a Lua number holds µs since the
/// epoch exactly, not ns). The stored value is the theoretical arrival time, exactly as the
/// in-process limiter keeps it in an atomic; it expires once fully rested.
///
/// Returns `{1, 0}` when admitted, `{0, wait_µs}` when not, `{-1, burst}` for more cells than
/// the burst.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cells = tonumber(ARGV[3])
if cells > burst then return {-1, burst} end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval * cells
local allowed_at = new_tat - interval * burst
if allowed_at <= now then
  local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
  return {1, 0}
end
return {0, allowed_at - now}
";

/// A rate limit shared by every replica through Redis: `count` cells per `period`, bursts of
/// `burst`, exactly the in-process [`RateLimiter`]'s semantics (a limiter idle long enough
/// admits `burst` at once, then one per `period / count`). Cheap to clone; clones share the
/// local state (the remembered denial, the breaker around Redis).
///
/// One decision is one round trip (`EVALSHA`), bounded by the deadline (default 10 ms); a
/// denial is remembered until it expires (or for
/// [`DENIAL_RECHECK`](Self::DENIAL_RECHECK), if sooner), so a caller that keeps asking is
/// answered locally.
///
/// ```no_run
/// use std::time::Duration;
/// use tidewall_redis::{WhenUnavailable, RedisConn, RedisRateLimiter};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let conn = RedisConn::open("redis://127.0.0.1:6379")?;
/// let limiter = RedisRateLimiter::builder(&conn, "api", 100, Duration::from_secs(1))
///     .burst(10)
///     .partition("tenant-7")
///     .when_unavailable(WhenUnavailable::Local { share: 0.25 })
///     .build()?;
/// match limiter.check().await {
///     Ok(()) => { /* go ahead */ }
///     Err(rejected) => { /* 429, with rejected's retry_after */ }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedisRateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: RedisConn,
    key: String,
    /// Where [`verify`](RedisRateLimiter::verify) runs the script (with a suffix of its own).
    probe_key: String,
    interval_us: u64,
    burst: u32,
    backend: Backend,
    policy: WhenUnavailable,
    /// The in-process limiter of [`WhenUnavailable::Local`].
    local: Option<RateLimiter<Tokio>>,
    /// The last denial, until it expires.
    denied: Mutex<Option<Denial>>,
    script: redis::Script,
    /// Lease mode's cells, if it is on.
    lease: Option<Leased>,
}

#[derive(Debug, Clone, Copy)]
struct Denial {
    /// When the denied request could pass at the earliest.
    until: Instant,
    /// When to ask Redis again all the same: cells another replica gave back may be free
    /// sooner (see [`RedisRateLimiter::DENIAL_RECHECK`]).
    recheck_at: Instant,
    /// How many cells it asked for (a request for fewer might pass sooner).
    cells: u32,
}

/// Builds a [`RedisRateLimiter`]; see [`RedisRateLimiter::builder`].
#[derive(Debug, Clone)]
pub struct RedisRateLimiterBuilder {
    common: Common,
    count: u32,
    period: Duration,
    burst: Option<u32>,
    lease: Option<LeaseMode>,
}

impl RedisRateLimiter {
    /// How long a denial is answered locally at most before Redis is asked again, however
    /// long its wait. Without lease mode the stored state only moves later, so a remembered
    /// wait is never too long; but a replica in lease mode that gives cells back
    /// ([`return_unspent`](Self::return_unspent), or its last handle dropped) moves it
    /// earlier. Those cells reach a replica that was refused within this long. The
    /// `retry_after` a refusal reports is still the whole wait Redis gave.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall_redis::RedisRateLimiter;
    ///
    /// assert_eq!(RedisRateLimiter::DENIAL_RECHECK, Duration::from_secs(1));
    /// ```
    pub const DENIAL_RECHECK: Duration = Duration::from_secs(1);

    /// `count` cells per `period` under the name `name`, on `conn`. Defaults: a burst of
    /// `count`, partition `"default"`, a 10 ms deadline per Redis call, and
    /// [`WhenUnavailable::Open`].
    pub fn builder(
        conn: &RedisConn,
        name: &str,
        count: u32,
        period: Duration,
    ) -> RedisRateLimiterBuilder {
        RedisRateLimiterBuilder {
            common: Common::new(conn, name),
            count,
            period,
            burst: None,
            lease: None,
        }
    }

    /// One decision for one cell.
    ///
    /// **Cancel safety:** dropping the future abandons the round trip. If Redis had already
    /// run the script, the cell is spent.
    ///
    /// # Errors
    ///
    /// [`Rejected::RateLimited`] with the wait, [`Rejected::BackendUnavailable`] when Redis
    /// did not answer and the policy is to fail closed.
    pub async fn check(&self) -> Result<(), Rejected> {
        self.check_n(1).await
    }

    /// One decision for `cells` cells.
    ///
    /// **Cancel safety:** as [`check`](Self::check).
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check), and [`Rejected::InsufficientCapacity`] for more cells than
    /// the burst.
    pub async fn check_n(&self, cells: u32) -> Result<(), Rejected> {
        self.check_n_within(cells, None).await
    }

    /// Checks at start-up that this limit can work: loads its script and runs it once on a
    /// key of its own name's (partition `%probe`, which no real partition has), so a user
    /// that may not load or run it, run a command it calls (`TIME`, `GET`, `SET`), or touch
    /// its keys is reported now, not met by the failure policy on every call. The probe's
    /// key expires within a millisecond; the limit itself is not touched.
    ///
    /// **Cancel safety:** dropping it abandons the probe; nothing is left but the probe key.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tidewall_redis::{RedisConn, RedisRateLimiter};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = RedisConn::builder("redis://127.0.0.1:6379").connect().await?;
    /// let limiter = RedisRateLimiter::builder(&conn, "api", 100, Duration::from_secs(1)).build()?;
    /// limiter.verify().await?; // a ConnectError::Permission names what is missing
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConnectError::Permission`] for a missing permission;
    /// [`Unreachable`](ConnectError::Unreachable) when Redis does not answer within 2 s, and
    /// the other variants as [`RedisConnBuilder::connect`](crate::RedisConnBuilder::connect).
    pub async fn verify(&self) -> Result<(), ConnectError> {
        let inner = &*self.inner;
        let mut conn = inner.conn.connection();
        probe(inner.script.prepare_invoke().load_async(&mut conn), None).await?;
        let mut invocation = inner.script.key(fresh_probe_key(&inner.probe_key));
        // One cell of a 1 µs interval on a new key: admitted, so every command runs.
        invocation.arg(1).arg(1).arg(1);
        probe(invocation.invoke_async::<(i64, i64)>(&mut conn), Some(GCRA)).await?;
        if let Some(lease) = &inner.lease {
            for script in [&lease.lease, &lease.give_back] {
                probe(script.prepare_invoke().load_async(&mut conn), None).await?;
            }
            let key = fresh_probe_key(&inner.probe_key);
            let mut take = lease.lease.key(&key);
            take.arg(1).arg(1).arg(1).arg(1);
            probe(
                take.invoke_async::<(i64, i64)>(&mut conn),
                Some(crate::lease::LEASE),
            )
            .await?;
            let mut give = lease.give_back.key(&key);
            give.arg(1).arg(1);
            probe(
                give.invoke_async::<i64>(&mut conn),
                Some(crate::lease::GIVE_BACK),
            )
            .await?;
        }
        Ok(())
    }

    /// In [lease mode](RedisRateLimiterBuilder::lease_mode), gives this replica's unspent
    /// cells back to Redis (one round trip): call it on shutdown so the others can use them.
    /// Dropping the last handle gives them back too, in the background, if a tokio runtime
    /// is still running. Returns the cells given back (0 outside lease mode).
    ///
    /// **Cancel safety:** dropping the future after the round trip left may lose the cells
    /// (they were taken from this replica first); the limit is then briefly stricter, never
    /// looser.
    ///
    /// # Errors
    ///
    /// [`Rejected::BackendUnavailable`] when Redis did not answer; the cells stay held.
    pub async fn return_unspent(&self) -> Result<u64, Rejected> {
        let inner = &*self.inner;
        let Some(lease) = &inner.lease else {
            return Ok(0);
        };
        let (_no_refills, cells) = lease.returning().await;
        if cells == 0 {
            return Ok(0);
        }
        let mut conn = inner.conn.connection();
        let mut invocation = lease.give_back.key(&inner.key);
        invocation.arg(inner.interval_us).arg(cells);
        match inner
            .backend
            .call(invocation.invoke_async::<i64>(&mut conn))
            .await
        {
            Ok(_) => Ok(cells),
            Err(_) => {
                lease.restore(cells);
                Err(Rejected::BackendUnavailable)
            }
        }
    }

    /// A decision in lease mode: a held cell, else the next batch (one round trip, shared
    /// by every caller waiting for it).
    async fn check_leased(
        &self,
        lease: &Leased,
        cells: u32,
        cap: Option<Duration>,
    ) -> Result<(), Rejected> {
        let wanted = u64::from(cells);
        // Three rounds at most: callers that keep losing freshly fetched cells to others
        // are told to come back after one interval.
        for _ in 0..3 {
            if let Some(left) = lease.try_take(wanted) {
                self.refill_ahead(lease, left);
                return Ok(());
            }
            if let Some(retry_after) = lease.denied_for() {
                return Err(Rejected::RateLimited { retry_after });
            }
            match lease
                .refill(wanted, None, |want, at_least| {
                    self.ask_lease(want, at_least, cap)
                })
                .await
            {
                Err(Unavailable::CallerDeadline) => return Err(Rejected::DeadlineExceeded),
                Err(_) => return self.inner.without_redis(cells),
                Ok(true) => {}
                Ok(false) => {
                    let retry_after = lease
                        .denied_for()
                        .unwrap_or(Duration::from_micros(self.inner.interval_us));
                    return Err(Rejected::RateLimited { retry_after });
                }
            }
        }
        Err(Rejected::RateLimited {
            retry_after: Duration::from_micros(self.inner.interval_us),
        })
    }

    /// Starts the next batch's round trip in the background when `left` cells are below
    /// half a batch, so a replica spending steadily never waits for Redis.
    #[inline]
    fn refill_ahead(&self, lease: &Leased, left: u64) {
        if !lease.should_refill(left) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            lease.refilled();
            return;
        };
        let (this, since) = (self.clone(), lease.returns());
        runtime.spawn(async move {
            if let Some(lease) = &this.inner.lease {
                // Ahead of need: a failure is met by the next caller that runs dry.
                let _ = lease
                    .refill(0, Some(since), |want, at_least| {
                        this.ask_lease(want, at_least, None)
                    })
                    .await;
                lease.refilled();
            }
        });
    }

    /// One lease round trip for `want` cells, with the wait until `at_least` more are free
    /// (at most the burst): `(granted, wait_µs)`.
    async fn ask_lease(
        &self,
        want: u64,
        at_least: u64,
        cap: Option<Duration>,
    ) -> Result<(u64, u64), Unavailable> {
        let inner = &*self.inner;
        let Some(lease) = inner.lease.as_ref() else {
            return Err(Unavailable::Failed("not in lease mode".to_owned()));
        };
        let mut conn = inner.conn.connection();
        let mut invocation = lease.lease.key(&inner.key);
        invocation
            .arg(inner.interval_us)
            .arg(inner.burst)
            .arg(want)
            .arg(at_least.min(u64::from(inner.burst)));
        let (granted, wait_us): (i64, i64) = inner
            .backend
            .call_within(invocation.invoke_async(&mut conn), cap)
            .await?;
        Ok((
            u64::try_from(granted).unwrap_or(0),
            u64::try_from(wait_us).unwrap_or(0),
        ))
    }

    /// [`check_n`](Self::check_n) with the round trip also cut short at `cap`.
    async fn check_n_within(&self, cells: u32, cap: Option<Duration>) -> Result<(), Rejected> {
        let inner = &*self.inner;
        if cells > inner.burst {
            return Err(Rejected::InsufficientCapacity { burst: inner.burst });
        }
        if let Some(lease) = &inner.lease
            && u64::from(cells) <= lease.max_batch()
        {
            return self.check_leased(lease, cells, cap).await;
        }
        if let Some(retry_after) = inner.remembered_denial(cells) {
            return Err(Rejected::RateLimited { retry_after });
        }
        let sent = Tokio.now();
        let mut conn = inner.conn.connection();
        let mut invocation = inner.script.key(&inner.key);
        invocation
            .arg(inner.interval_us)
            .arg(inner.burst)
            .arg(cells);
        let reply: Result<(i64, i64), Unavailable> = inner
            .backend
            .call_within(invocation.invoke_async(&mut conn), cap)
            .await;
        match reply {
            Ok((1, _)) => {
                // An admission moves the state on: a remembered wait would now be too short.
                inner.forget_denial();
                Ok(())
            }
            Ok((0, wait_us)) => {
                let retry_after = Duration::from_micros(u64::try_from(wait_us).unwrap_or(0));
                inner.remember_denial(Denial {
                    // From when the request left: never remembered longer than Redis meant
                    // (nor past the clock's end: a shorter memory only asks Redis sooner).
                    until: tidewall::rt::instant_after(sent, retry_after),
                    recheck_at: tidewall::rt::instant_after(sent, RedisRateLimiter::DENIAL_RECHECK),
                    cells,
                });
                Err(Rejected::RateLimited { retry_after })
            }
            Ok((_, burst)) => Err(Rejected::InsufficientCapacity {
                burst: u32::try_from(burst).unwrap_or(inner.burst),
            }),
            Err(Unavailable::CallerDeadline) => Err(Rejected::DeadlineExceeded),
            Err(_) => inner.without_redis(cells),
        }
    }

    /// Waits until the limit admits one cell, but never past `deadline`: sleeps the wait
    /// Redis reported, or [`DENIAL_RECHECK`](Self::DENIAL_RECHECK) if that is shorter (plus
    /// up to 1 ms of jitter, within the deadline), then asks again. So a long wait still
    /// sees cells a replica in lease mode gives back, within the recheck. A wait that Redis
    /// says ends past `deadline` is refused at once.
    ///
    /// **Cancel safety:** dropping it abandons the wait; no cell is taken unless the last
    /// round trip had already run.
    ///
    /// # Errors
    ///
    /// [`Rejected::DeadlineExceeded`] when the wait would pass `deadline`, or Redis has not
    /// answered by then (a healthy Redis slower than what is left is not "unavailable");
    /// otherwise as [`check`](Self::check).
    pub async fn until_ready_before(&self, deadline: Deadline) -> Result<(), Rejected> {
        // Waiters that share a denial would all wake at its end and ask together: each adds
        // up to a millisecond of its own.
        let mut jitter = SplitMix64::new(crate::bulkhead::random_id());
        loop {
            // The round trip never runs past what is left of the caller's deadline either (the
            // first one is always made: "now" is Redis's answer).
            let left = deadline
                .remaining(Tokio.now())
                .filter(|left| !left.is_zero());
            let wait = match self.check_n_within(1, left).await {
                Err(Rejected::RateLimited { retry_after }) => retry_after,
                done => return done,
            };
            // A wait that ends at the deadline is waited out; one past it is refused now.
            if deadline
                .remaining(Tokio.now())
                .is_some_and(|left| left < wait)
            {
                return Err(Rejected::DeadlineExceeded);
            }
            let spread = Duration::from_micros(jitter.below_or_equal(1_000));
            // Checked above: what is left of the deadline covers the wait itself.
            let left = deadline.remaining(Tokio.now()).unwrap_or(Duration::MAX);
            let nap = wait.min(Self::DENIAL_RECHECK).saturating_add(spread);
            Tokio.sleep(nap.min(left)).await;
        }
    }

    /// The key holding this limit's state.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// The Lua source of the decision (for inspection, or to run the same script from
    /// `redis-benchmark`). Its arguments: the emission interval in µs, the burst, the cells.
    pub fn script_source() -> &'static str {
        GCRA
    }

    /// The script's arguments for one cell of this limit, after its key.
    pub fn script_args(&self) -> [u64; 3] {
        [self.inner.interval_us, u64::from(self.inner.burst), 1]
    }
}

impl Inner {
    fn remembered_denial(&self, cells: u32) -> Option<Duration> {
        let mut denied = self.denied.lock().unwrap_or_else(PoisonError::into_inner);
        let denial = (*denied)?;
        let now = Tokio.now();
        if now >= denial.until || now >= denial.recheck_at {
            *denied = None;
            return None;
        }
        // The stored state only moves later, so a request at least as large as the denied
        // one cannot pass before the denial expires, nor before one more interval per extra
        // cell (GCRA: each cell moves the arrival time one interval on).
        (cells >= denial.cells).then(|| {
            let extra = u64::from(cells - denial.cells).saturating_mul(self.interval_us);
            (denial.until - now).saturating_add(Duration::from_micros(extra))
        })
    }

    fn forget_denial(&self) {
        *self.denied.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn remember_denial(&self, denial: Denial) {
        *self.denied.lock().unwrap_or_else(PoisonError::into_inner) = Some(denial);
    }

    fn without_redis(&self, cells: u32) -> Result<(), Rejected> {
        match (&self.policy, &self.local) {
            (WhenUnavailable::Closed, _) => Err(Rejected::BackendUnavailable),
            (WhenUnavailable::Local { .. }, Some(local)) => local.check_n(cells),
            _ => Ok(()),
        }
    }
}

impl RedisRateLimiterBuilder {
    /// Cells admitted at once from rest (default: `count`).
    #[must_use]
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Lease mode: this replica takes cells from Redis a batch at a time and decides
    /// locally (an atomic per decision), within the accuracy bound [`LeaseMode`] documents.
    /// Default: off, every decision one round trip (exact). Requests for more cells than a
    /// batch are decided exactly.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tidewall_redis::{LeaseMode, RedisConn, RedisRateLimiter};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let conn = RedisConn::builder("redis://127.0.0.1:6379").connect().await?;
    /// let limiter = RedisRateLimiter::builder(&conn, "hot", 100_000, Duration::from_secs(1))
    ///     .lease_mode(LeaseMode::new(500)?) // each replica holds at most 500 cells
    ///     .build()?;
    /// limiter.check().await?; // from a held cell; Redis is asked once per batch
    /// limiter.return_unspent().await?; // on shutdown
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn lease_mode(mut self, mode: LeaseMode) -> Self {
        self.lease = Some(mode);
        self
    }

    common_options!();

    /// Validates and builds.
    ///
    /// The emission interval `period / count` is kept in whole microseconds (Redis's clock),
    /// by the same rule as the in-process limiter's nanoseconds
    /// ([`emission_interval`](tidewall_core::gcra::emission_interval)): a rate that rounding
    /// would make more than 0.1 % faster than asked is refused. The script computes in Lua
    /// numbers (doubles, exact to 2^53), so `burst × interval` is at most 2^50 µs (about 35
    /// years).
    ///
    /// # Errors
    ///
    /// A zero count, period, burst or deadline; a `period / count` under 1 µs or more than
    /// 0.1 % above a whole number of µs, or a `burst × interval` over 2^50 µs
    /// ([`ConfigError::OutOfRange`]); a period or deadline beyond `u64::MAX` nanoseconds; a
    /// local share outside (0, 1]; an empty name.
    pub fn build(self) -> Result<RedisRateLimiter, ConfigError> {
        let burst = self.burst.unwrap_or(self.count);
        // The in-process rule first (zero settings, overflow), then Redis's coarser clock.
        Gcra::new(self.count, self.period, burst)?;
        let interval_us = emission_interval(self.count, self.period, Resolution::Micros)?;
        if interval_us.saturating_mul(u64::from(burst)) > MAX_LUA_MICROS {
            return Err(ConfigError::OutOfRange {
                field: "burst",
                value: f64::from(burst),
                allowed: "such that burst × period / count is at most 2^50 µs (about 35 years)",
            });
        }
        let key = self.common.validated_key("rate")?;
        let local = match self.common.policy {
            WhenUnavailable::Local { share } => {
                Some(local_share(self.count, self.period, burst, share)?)
            }
            WhenUnavailable::Open | WhenUnavailable::Closed => None,
        };
        Ok(RedisRateLimiter {
            inner: Arc::new(Inner {
                key,
                probe_key: self.common.probe_key("rate"),
                conn: self.common.conn,
                interval_us,
                burst,
                backend: Backend::new(self.common.deadline)?,
                policy: self.common.policy,
                local,
                denied: Mutex::new(None),
                script: redis::Script::new(GCRA),
                lease: self.lease.map(|mode| Leased::new(mode, interval_us)),
            }),
        })
    }
}

/// The most µs a script adds to Redis's clock: Lua numbers are doubles, exact up to 2^53, and
/// the clock (µs since 1970) plus twice this stays below that until the 2180s.
pub(crate) const MAX_LUA_MICROS: u64 = 1 << 50;

/// The in-process limiter holding `share` of the global limit (at least one cell of rate
/// and of burst).
fn local_share(
    count: u32,
    period: Duration,
    burst: u32,
    share: f64,
) -> Result<RateLimiter<Tokio>, ConfigError> {
    RateLimiter::builder(share_of(count, share)?, period)
        .burst(share_of(burst, share)?)
        .runtime(Tokio)
        .build()
}

/// `share` of `n`, rounded down, at least 1.
///
/// # Errors
///
/// A share outside (0, 1] (NaN included).
pub(crate) fn share_of(n: u32, share: f64) -> Result<u32, ConfigError> {
    if !(share > 0.0 && share <= 1.0) {
        return Err(ConfigError::OutOfRange {
            field: "share",
            value: share,
            allowed: "0 < share <= 1",
        });
    }
    // share is in (0, 1], so n × share is in (0, n].
    Ok(floor_within(f64::from(n) * share, n).max(1))
}

/// The largest `k <= max` with `k <= x` (a float's floor as a `u32`, without a cast).
fn floor_within(x: f64, max: u32) -> u32 {
    let (mut low, mut high) = (0u32, max);
    while low < high {
        let mid = low + (high - low).div_ceil(2);
        if f64::from(mid) <= x {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    low
}

impl Drop for Inner {
    /// Gives lease mode's unspent cells back in the background, if a runtime is running.
    fn drop(&mut self) {
        let Some(lease) = &self.lease else { return };
        let cells = lease.take_all();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if cells == 0 {
            return;
        }
        let mut conn = self.conn.connection();
        let (script, key, interval_us) =
            (lease.give_back.clone(), self.key.clone(), self.interval_us);
        runtime.spawn(async move {
            let mut invocation = script.key(&key);
            invocation.arg(interval_us).arg(cells);
            let given = invocation.invoke_async::<i64>(&mut conn);
            let _ = tokio::time::timeout(Duration::from_secs(1), given).await;
        });
    }
}

impl tidewall::admission::Admission for RedisRateLimiter {
    type Guard = ();
    type Admit = crate::RedisAdmit<()>;

    /// In lease mode, a held cell (and the next batch fetched ahead, in the background);
    /// otherwise never decides without Redis: even a remembered denial is left to
    /// [`admit`](tidewall::admission::Admission::admit).
    fn try_admit(&self) -> Option<()> {
        let lease = self.inner.lease.as_ref()?;
        let left = lease.try_take(1)?;
        self.refill_ahead(lease, left);
        Some(())
    }

    /// Under [`Wait::No`](tidewall::admission::Wait::No) one decision
    /// ([`check`](RedisRateLimiter::check)), under
    /// [`Wait::Until`](tidewall::admission::Wait::Until)
    /// [`until_ready_before`](RedisRateLimiter::until_ready_before).
    fn admit(&self, wait: tidewall::admission::Wait) -> Self::Admit {
        let limiter = self.clone();
        Box::pin(async move {
            match wait {
                tidewall::admission::Wait::Until(deadline) => {
                    limiter.until_ready_before(deadline).await
                }
                _ => limiter.check().await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::floor_within;

    #[test]
    fn floors_without_casts() {
        assert_eq!(floor_within(2.5, 10), 2);
        assert_eq!(floor_within(10.0, 10), 10);
        assert_eq!(floor_within(0.3, 10), 0);
        assert_eq!(floor_within(4e9, u32::MAX), 4_000_000_000);
    }
}
