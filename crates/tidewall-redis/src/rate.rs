//! The GCRA rate limiter whose state lives in Redis.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tidewall_core::rng::SplitMix64;

use tidewall::rt::{Clock as _, Tokio, instant_after};
use tidewall::telemetry::Refusals;
use tidewall::{ConfigError, Deadline, Rejected};
use tidewall_core::gcra::{Denied, Gcra, Resolution, emission_interval};
use tokio::runtime::Handle;

use crate::backend::{Backend, LAST_TRY, PASSED_CAP, Unavailable};
use crate::conn::RedisConn;
use crate::lease::{Joined, LeaseMode, Leased, RefillOutcome};
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
/// `burst`, exactly the in-process [`RateLimiter`](tidewall::rate::RateLimiter)'s semantics
/// (a limiter idle long enough admits `burst` at once, then one per `period / count`). Cheap
/// to clone; clones share the local state (the remembered denial, the breaker around Redis).
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
    local: Option<LocalShare>,
    /// The last denial, until it expires.
    denied: Mutex<Option<Denial>>,
    script: redis::Script,
    /// Lease mode's cells, if it is on.
    lease: Option<Leased>,
    /// Counts this limit's answers that refuse (`redis_rate`).
    refusals: Refusals,
    /// The tokio runtime it was built on, else the first it refilled on: where lease mode's
    /// unspent cells are given back when the last handle is dropped outside any runtime.
    runtime: OnceLock<Handle>,
}

/// How a lease-mode caller's wait for a refill ended.
#[derive(Debug)]
enum Waited {
    /// The refill's outcome (an error is Redis's: the refill failed, or its deadline passed
    /// unanswered), and whether it was started for this caller.
    Refill(RefillOutcome, bool),
    /// The caller's own deadline came first.
    CallerEnd,
    /// The limit's deadline from when the caller asked came first, the refill still running.
    OwnEnd,
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
    /// run the script, the cell is spent. In lease mode, a batch being fetched is not
    /// abandoned: it is held for the next decisions (unless the runtime it is fetched on
    /// shuts down first: see [`LeaseMode`]).
    ///
    /// # Errors
    ///
    /// [`Rejected::RateLimited`] with the wait, [`Rejected::BackendUnavailable`] when Redis
    /// did not answer and the policy is to fail closed (with
    /// [`WhenUnavailable::Local`], the local share's own decision).
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
        let answer = self.check_n_within(cells, None).await;
        self.inner.refusals.counted(answer)
    }

    /// Checks at start-up that this limit can work: loads its script and runs it once on a
    /// key of its own (under its own hash tag, so on the Cluster node that holds its state;
    /// its kind begins `%probe:`, which no real key's does), so a user
    /// that may not load or run it, run a command it calls (`TIME`, `GET`, `SET`), or touch
    /// its keys is reported now, not met by the failure policy on every call. The probe's
    /// key expires within two milliseconds; the limit itself is not touched.
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
    /// cells back to Redis (one round trip, after the batch being fetched, if any, has
    /// arrived): call it on shutdown so the others can use them. Dropping the last handle
    /// gives them back too, in the background, on the current tokio runtime or else (a plain
    /// thread) on the one the limiter was built or refilled on, while that one runs.
    ///
    /// Returns the cells this replica handed back once Redis answered: all it held (0
    /// outside lease mode, or with none held). That is not what the limit gained: its state
    /// never moves back past rest, so Redis credits fewer when the limit rested meanwhile,
    /// and none once its key expired (a whole burst's worth of idle time) or on a restarted
    /// Redis, while nothing has written the key since; the count is the same. Once another
    /// replica has spent from a key made anew (after an expiry, or on a restarted Redis),
    /// the give-back moves that new state back like any other, up to rest: the limit then
    /// forgives up to the cells given back, within the fleet's bound (the exact limit plus a
    /// batch per replica).
    ///
    /// **Cancel safety:** dropping the future after the round trip left may lose the cells
    /// (they were taken from this replica first); the limit is then briefly stricter, never
    /// looser.
    ///
    /// # Errors
    ///
    /// [`Rejected::BackendUnavailable`] when the give-back failed. When nothing was sent (the
    /// breaker around Redis is open), the cells stay held, for a later call to give back.
    /// When it was sent and failed (no answer came in time, the connection failed under it,
    /// or Redis answered with an error), Redis may have taken them back, so this replica gives
    /// them up: held as well, they could be spent twice, and the fleet exceed its bound. The
    /// limit is then briefly stricter, never looser (after an error reply Redis still counts
    /// them as taken: they are spent by nobody until time frees them).
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
            Err(Unavailable::BreakerOpen) => {
                lease.restore(cells);
                Err(Rejected::BackendUnavailable)
            }
            // Sent: whether Redis ran it is unknown.
            Err(_) => Err(Rejected::BackendUnavailable),
        }
    }

    /// A decision in lease mode: a held cell, else the next batch. Its round trip runs on a
    /// task of its own, within its own deadline, and is shared by every caller that runs dry
    /// meanwhile. The first round waits for the refill under way (or one it starts) until
    /// that refill's deadline, or `cap` if sooner (then [`Rejected::DeadlineExceeded`]).
    /// Only a refill that failed (an error, or no answer by its deadline) is answered by the
    /// failure policy. A caller whose refill brought cells that others took tries again,
    /// until one deadline of the limit's from when it asked: past that, with a refill still
    /// running, it is refused with `RateLimited` for one interval. A zero `cap` (the
    /// caller's deadline has passed) waits [`PASSED_CAP`] at most, and is never answered by
    /// the failure policy.
    async fn check_leased(
        &self,
        lease: &Leased,
        cells: u32,
        cap: Option<Duration>,
    ) -> Result<(), Rejected> {
        let wanted = u64::from(cells);
        let now = Tokio.now();
        let own_end = instant_after(now, self.inner.backend.deadline());
        let passed = cap.is_some_and(|cap| cap.is_zero());
        let caller_end = cap.map(|cap| instant_after(now, if passed { PASSED_CAP } else { cap }));
        let interval = Duration::from_micros(self.inner.interval_us);
        // Three rounds at most: callers that keep losing freshly fetched cells to others
        // are told to come back after one interval.
        for round in 0..3 {
            if let Some(left) = lease.try_take(wanted) {
                self.refill_ahead(lease, left);
                return Ok(());
            }
            if let Some(retry_after) = lease.denied_for() {
                return Err(Rejected::RateLimited { retry_after });
            }
            let own = (round > 0).then_some(own_end);
            match self.refilled(lease, wanted, own_end, own, caller_end).await {
                Waited::CallerEnd => return Err(Rejected::DeadlineExceeded),
                // Redis is not known to be away: the refill still runs, within its deadline.
                Waited::OwnEnd => {
                    return Err(Rejected::RateLimited {
                        retry_after: interval,
                    });
                }
                Waited::Refill(Err(_), _) if passed => return Err(Rejected::DeadlineExceeded),
                Waited::Refill(Err(_), _) => return self.inner.without_redis(cells),
                // Enough arrived, or a refill for another caller's need: try again (asking
                // for this one's next round).
                Waited::Refill(Ok(held), ours) if held >= wanted || !ours => {}
                Waited::Refill(Ok(_), _) => {
                    let retry_after = lease.denied_for().unwrap_or(interval);
                    return Err(Rejected::RateLimited { retry_after });
                }
            }
        }
        Err(Rejected::RateLimited {
            retry_after: interval,
        })
    }

    /// Waits for the refill under way, or starts one for `needed` cells (whose deadline is
    /// `start_end`): its outcome, and whether it was started for this caller's `needed`;
    /// [`Waited::Refill`] with [`Unavailable::Timeout`] when its deadline passed unanswered.
    /// The wait is cut short at `caller_end` ([`Waited::CallerEnd`]) or `own_end`
    /// ([`Waited::OwnEnd`]), whichever comes first, if before the refill's deadline; a
    /// caller whose end has passed starts nothing.
    async fn refilled(
        &self,
        lease: &Leased,
        needed: u64,
        start_end: Instant,
        own_end: Option<Instant>,
        caller_end: Option<Instant>,
    ) -> Waited {
        let now = Tokio.now();
        if caller_end.is_some_and(|end| end <= now) {
            return Waited::CallerEnd;
        }
        if own_end.is_some_and(|end| end <= now) {
            return Waited::OwnEnd;
        }
        // A refill started in a later round has a deadline of its own, from now.
        let start_end = if own_end.is_some() {
            instant_after(now, self.inner.backend.deadline())
        } else {
            start_end
        };
        let (mut outcome, refill_end, ours) = match lease.join_or_start(start_end) {
            Joined::Waiting(outcome, end) => (outcome, end, false),
            Joined::Starting(done, outcome) => {
                self.start_refill(done, needed, None, start_end);
                (outcome, start_end, true)
            }
        };
        // The first end to come, and what it means; the refill's own deadline wins a tie.
        let mut end = (refill_end, Waited::Refill(Err(Unavailable::Timeout), ours));
        for (cut, why) in [(own_end, Waited::OwnEnd), (caller_end, Waited::CallerEnd)] {
            if let Some(cut) = cut
                && cut < end.0
            {
                end = (cut, why);
            }
        }
        let waited = tokio::time::timeout_at(end.0.into(), outcome.wait_for(Option::is_some))
            .await
            .map(|done| done.map(|done| Self::outcome_of(&done)));
        match waited {
            Ok(Ok(done)) => Waited::Refill(done, ours),
            Ok(Err(_)) => Waited::Refill(
                Err(Unavailable::Failed(
                    "the refill's task ended without an outcome (its runtime shut down)".to_owned(),
                )),
                ours,
            ),
            // An outcome sent as the time ran out still counts.
            Err(_) => match outcome.borrow().as_ref() {
                Some(done) => Waited::Refill(done.clone(), ours),
                None => end.1,
            },
        }
    }

    /// A refill's outcome, once sent.
    fn outcome_of(done: &Option<RefillOutcome>) -> RefillOutcome {
        done.clone()
            .unwrap_or(Err(Unavailable::Failed("no refill outcome".to_owned())))
    }

    /// Runs a refill for `needed` cells (ahead of need: `since`, see [`Leased::refill`]) on a
    /// task of its own, by `end` (its deadline), and sends its outcome on `done`: a caller
    /// that stops waiting for it loses nothing. Outside any runtime, sends a failure instead.
    ///
    /// The task runs on the current runtime (else the one remembered, see
    /// [`Inner::runtime`]): if that runtime shuts down while the round trip is in flight,
    /// the task is dropped with it, and a batch Redis granted meanwhile is lost (spent in
    /// Redis, never held).
    fn start_refill(
        &self,
        done: tokio::sync::watch::Sender<Option<RefillOutcome>>,
        needed: u64,
        since: Option<u64>,
        end: Instant,
    ) {
        let Some(runtime) = self.inner.runtime() else {
            done.send_replace(Some(Err(Unavailable::Failed(
                "not inside a tokio runtime".to_owned(),
            ))));
            if let Some(lease) = &self.inner.lease {
                lease.refilled();
            }
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            let Some(lease) = &this.inner.lease else {
                return;
            };
            let outcome = lease
                .refill(needed, since, end, |want, at_least| {
                    this.ask_lease(want, at_least, end)
                })
                .await;
            // The outcome first: a refill ahead started meanwhile then finds this one over.
            done.send_replace(Some(outcome));
            lease.refilled();
        });
    }

    /// Starts the next batch's round trip in the background when `left` cells are below
    /// half a batch, so a replica spending steadily never waits for Redis; callers that run
    /// dry meanwhile wait for it rather than start their own.
    #[inline]
    fn refill_ahead(&self, lease: &Leased, left: u64) {
        if !lease.should_refill(left) {
            return;
        }
        let end = instant_after(Tokio.now(), self.inner.backend.deadline());
        match lease.join_or_start(end) {
            // The refill under way marks the background refill over when it ends.
            Joined::Waiting(..) => {}
            Joined::Starting(done, _) => self.start_refill(done, 0, Some(lease.returns()), end),
        }
    }

    /// One lease round trip for `want` cells, with the wait until `at_least` more are free
    /// (at most the burst): `(granted, wait_µs)`. Bounded by the refill's deadline `end`
    /// only: a caller that stops waiting for it does not cut it short.
    async fn ask_lease(
        &self,
        want: u64,
        at_least: u64,
        end: Instant,
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
            .call_until(invocation.invoke_async(&mut conn), end)
            .await?;
        Ok((
            u64::try_from(granted).unwrap_or(0),
            u64::try_from(wait_us).unwrap_or(0),
        ))
    }

    /// [`check_n`](Self::check_n) with the round trip also cut short at `cap` (zero: the
    /// caller's deadline has passed: see [`Backend::call_within`]: 1 ms, and whatever is not
    /// an answer is [`Rejected::DeadlineExceeded`]).
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
            // Past its deadline, a caller is not answered by the failure policy.
            Err(_) if cap.is_some_and(|cap| cap.is_zero()) => Err(Rejected::DeadlineExceeded),
            Err(_) => inner.without_redis(cells),
        }
    }

    /// Waits until the limit admits one cell, but never past `deadline`: sleeps the wait
    /// Redis reported, or [`DENIAL_RECHECK`](Self::DENIAL_RECHECK) if that is shorter (plus
    /// up to 1 ms of jitter, if that still ends 1 ms before the deadline), then asks again.
    /// So a long wait still sees cells a replica in lease mode gives back, within the
    /// recheck. A wait that Redis says ends past `deadline`, or less than 1 ms before it, is
    /// refused at once: the timer wakes up to a millisecond late, and the round trip that
    /// follows needs time before the deadline to be answered, so waiting it out would end in
    /// a refusal. No wait for Redis runs past what is left of `deadline`, and no round trip
    /// is made after a wait that reached it.
    ///
    /// A `deadline` that has already passed gets one decision, as [`check`](Self::check),
    /// with one round trip of at most 1 ms (a healthy Redis on a local network answers
    /// within it, once connected: the first call on a new connection also connects and
    /// loads the script, and is refused; in lease mode a held cell admits at once, and a
    /// batch being fetched is waited for that long at most): admitted, or refused with
    /// [`Rejected::DeadlineExceeded`], never by the failure policy.
    ///
    /// **Cancel safety:** dropping it abandons the wait; no cell is taken unless the last
    /// round trip had already run (in lease mode, a batch being fetched is still held
    /// afterwards, while the runtime it is fetched on runs: see [`LeaseMode`]).
    ///
    /// # Errors
    ///
    /// [`Rejected::DeadlineExceeded`] when the wait would end past `deadline` or less than
    /// 1 ms before it, or Redis has not answered by then (a healthy Redis slower than what is
    /// left is not "unavailable"), or for a deadline already passed that Redis did not answer
    /// within 1 ms; otherwise as [`check`](Self::check).
    pub async fn until_ready_before(&self, deadline: Deadline) -> Result<(), Rejected> {
        let answer = self.until_ready_before_uncounted(deadline).await;
        self.inner.refusals.counted(answer)
    }

    /// [`until_ready_before`](Self::until_ready_before), its refusal not counted yet.
    async fn until_ready_before_uncounted(&self, deadline: Deadline) -> Result<(), Rejected> {
        // Waiters that share a denial would all wake at its end and ask together: each adds
        // up to a millisecond of its own.
        let mut jitter = SplitMix64::new(crate::bulkhead::random_id());
        let mut first = true;
        loop {
            // The round trip never runs past what is left of the caller's deadline. Only the
            // first decision may find it passed: a wait that reached it is not asked again.
            let left = deadline.remaining(Tokio.now());
            if !first && left.is_some_and(|left| left.is_zero()) {
                return Err(Rejected::DeadlineExceeded);
            }
            first = false;
            let wait = match self.check_n_within(1, left).await {
                Err(Rejected::RateLimited { retry_after }) => retry_after,
                done => return done,
            };
            let nap = wait.min(Self::DENIAL_RECHECK);
            let sleep = match deadline.remaining(Tokio.now()) {
                None => nap.saturating_add(Duration::from_micros(jitter.below_or_equal(1_000))),
                // A wait that would not leave the margin is refused now, not slept out.
                Some(left) if left < wait.saturating_add(LAST_TRY) => {
                    return Err(Rejected::DeadlineExceeded);
                }
                Some(left) => {
                    // The jitter only within what is left after the nap and the margin.
                    let room = left - LAST_TRY - nap;
                    let spread = Duration::from_micros(jitter.below_or_equal(1_000));
                    nap + spread.min(room)
                }
            };
            Tokio.sleep(sleep).await;
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

    /// The runtime to spawn on: the current one (remembered if none was), else the one it
    /// was built or first refilled on.
    fn runtime(&self) -> Option<Handle> {
        match Handle::try_current() {
            Ok(current) => {
                if self.runtime.get().is_none() {
                    let _ = self.runtime.set(current.clone());
                }
                Some(current)
            }
            Err(_) => self.runtime.get().cloned(),
        }
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
    /// ([`ConfigError::OutOfRange`]); [`ConfigError::DurationOverflow`] for a deadline beyond
    /// `u64::MAX` nanoseconds, and for a period or a `burst × interval` the in-process rule
    /// cannot hold in `u64` nanoseconds (checked first, as for
    /// [`Gcra::new`](tidewall_core::gcra::Gcra::new)); a local share outside (0, 1]; an empty
    /// name.
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
                Some(LocalShare::new(self.count, self.period, burst, share)?)
            }
            WhenUnavailable::Open | WhenUnavailable::Closed => None,
        };
        let runtime = OnceLock::new();
        if let Ok(current) = Handle::try_current() {
            let _ = runtime.set(current);
        }
        Ok(RedisRateLimiter {
            inner: Arc::new(Inner {
                key,
                probe_key: self.common.probe_key("rate"),
                conn: self.common.conn,
                interval_us,
                burst,
                backend: Backend::new(self.common.deadline, "rate", &self.common.name)?,
                policy: self.common.policy,
                local,
                denied: Mutex::new(None),
                script: redis::Script::new(GCRA),
                lease: self.lease.map(|mode| Leased::new(mode, interval_us)),
                runtime,
                refusals: Refusals::new(
                    "redis_rate",
                    self.common.name,
                    &[
                        Rejected::RateLimited {
                            retry_after: Duration::ZERO,
                        },
                        Rejected::BackendUnavailable,
                        Rejected::DeadlineExceeded,
                        Rejected::InsufficientCapacity { burst },
                    ],
                ),
            }),
        })
    }
}

/// The most µs a script adds to Redis's clock: Lua numbers are doubles, exact up to 2^53, and
/// the clock (µs since 1970) plus twice this stays below that until the 2180s.
pub(crate) const MAX_LUA_MICROS: u64 = 1 << 50;

/// [`WhenUnavailable::Local`]'s in-process limiter: `share` of the global rate and of its
/// burst (at least one cell of each), GCRA on tokio's clock. A request for more cells than
/// that burst (no more than the global one: larger ones never reach it) is judged as a
/// rate rather than refused for good: admitted once the share is fully rested, and paid for
/// at its rate: its arrival time moves `cells` intervals on, so the next cell waits
/// `cells − burst + 1` intervals (the share's burst is not owed).
#[derive(Debug)]
struct LocalShare {
    gcra: Gcra,
    /// The theoretical arrival time, in ns since `origin`.
    tat: AtomicU64,
    origin: Instant,
}

impl LocalShare {
    fn new(count: u32, period: Duration, burst: u32, share: f64) -> Result<Self, ConfigError> {
        Ok(Self {
            gcra: Gcra::new(share_of(count, share)?, period, share_of(burst, share)?)?,
            tat: AtomicU64::new(0),
            origin: Tokio.now(),
        })
    }

    /// One decision for `cells` cells.
    fn check_n(&self, cells: u32) -> Result<(), Rejected> {
        let now = u64::try_from(
            Tokio
                .now()
                .saturating_duration_since(self.origin)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let decided = if cells <= self.gcra.burst() {
                self.gcra
                    .decide(tat, now, cells)
                    .map_err(|denied| match denied {
                        Denied::Wait { nanos } => nanos,
                        // Not for cells within the burst; the longest wait, should it happen.
                        _ => u64::MAX,
                    })
            } else if tat > now {
                // Beyond the share's burst: from rest only.
                Err(tat - now)
            } else {
                // Paid for at the share's rate; a debt the state cannot hold (past 584 years
                // of ns) is never admitted.
                self.gcra
                    .interval_nanos()
                    .checked_mul(u64::from(cells))
                    .and_then(|debt| now.checked_add(debt))
                    .ok_or(u64::MAX)
            };
            match decided {
                Ok(new_tat) => match self.tat.compare_exchange_weak(
                    tat,
                    new_tat,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Ok(()),
                    Err(seen) => tat = seen,
                },
                Err(nanos) => {
                    return Err(Rejected::RateLimited {
                        retry_after: Duration::from_nanos(nanos),
                    });
                }
            }
        }
    }
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
    /// Gives lease mode's unspent cells back in the background: on the current runtime, or
    /// on the one it was built or refilled on (if that one still runs, the cells come back).
    fn drop(&mut self) {
        let Some(lease) = &self.lease else { return };
        let cells = lease.take_all();
        if cells == 0 {
            return;
        }
        let Some(runtime) = self.runtime() else {
            return;
        };
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
