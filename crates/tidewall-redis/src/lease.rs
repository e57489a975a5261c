//! Lease mode for a hot rate limit: cells taken from Redis a batch at a time and spent
//! locally, so a decision costs an atomic, and Redis one round trip per batch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tidewall::ConfigError;
use tokio::sync::watch;

use crate::backend::Unavailable;

/// Takes up to `ARGV[3]` cells at once from the same GCRA state as the exact script: as many
/// as are free now, at most the ask. Returns `{granted, wait_µs}`: the wait, from the state
/// after the grant, until `ARGV[4]` more cells are free (0 if they are).
pub(crate) const LEASE: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local at_least = tonumber(ARGV[4])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local free = math.floor((now + burst * interval - tat) / interval)
local granted = math.max(math.min(want, free), 0)
if granted > 0 then
  tat = tat + interval * granted
  local ttl_ms = math.ceil((tat - now) / 1000) + 1
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', ttl_ms)
end
return {granted, math.max(tat + at_least * interval - burst * interval - now, 0)}
";

/// Gives `ARGV[2]` unspent cells back: the state moves back as if they were never taken
/// (never before now, which is rest). Returns `ARGV[2]`, or 0 when the key had expired.
pub(crate) const GIVE_BACK: &str = r"
local interval = tonumber(ARGV[1])
local cells = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local new_tat = tat - interval * cells
if new_tat < now then new_tat = now end
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return cells
";

/// Opt-in lease mode for a [`RedisRateLimiter`](crate::RedisRateLimiter): each replica takes
/// cells from Redis a batch at a time and spends them locally (an atomic per decision),
/// taking the next batch in the background before the last runs out.
///
/// **Accuracy.** A replica never holds more than `max_batch` unspent cells, so over any
/// window the whole fleet admits at most what the exact limit admits in that window
/// (stretched by one round trip, for a batch granted just before it started) plus
/// `replicas × max_batch`. With exact mode that extra term is 0; it is the price of deciding
/// without Redis. Cells a replica holds are unavailable to the others until it spends them
/// or gives them back ([`return_unspent`](crate::RedisRateLimiter::return_unspent), or when
/// the last handle is dropped, in the background: on the current tokio runtime, or, dropped
/// on a thread outside any, on the one it was built or first refilled on, if that one still
/// runs): the fleet may admit less than the limit while batches sit idle, never more than
/// the bound.
///
/// **Waiting for a batch.** A replica fetches one batch at a time, on a task of its own,
/// within the limit's deadline from when the fetch started: every caller that runs dry
/// meanwhile waits for that same round trip until that deadline (or its own, if sooner: then
/// [`Rejected::DeadlineExceeded`](tidewall::Rejected::DeadlineExceeded)), and is answered
/// with its outcome. Only a round trip that failed (an error, or no answer by its deadline)
/// is answered by the failure policy, and it is not repeated for the callers that waited on
/// it. A caller whose cells others took as the batch arrived tries again, until one deadline
/// of the limit's from when it asked; if that passes with the next batch still on its way,
/// it is refused with [`RateLimited`](tidewall::Rejected::RateLimited) for one interval
/// (Redis is answering; the replica is short of cells). A caller that stops waiting, or is
/// dropped, leaves the round trip running: the batch is held for the next callers, not
/// lost, while the runtime it runs on keeps running.
///
/// **Runtimes.** A fetch (and the one fired ahead of need) runs on the current tokio
/// runtime, and so does the give-back of a last handle dropped there. A runtime shut down
/// while one is in flight (a `Runtime` built for one `block_on`, say, or a test's) drops
/// it: a batch Redis granted meanwhile is spent there and never held, or cells being given
/// back are not; the fleet then admits less than the limit, never more. Keep a lease-mode
/// limiter on a runtime that outlives its traffic.
///
/// **The batch adapts** to the replica's own rate: a batch is what it spends in `horizon`
/// (default 10 ms), from 1 cell up to `max_batch`; a replica that runs dry before its next
/// batch arrives doubles it. A replica that has run dry and is granted less than half its
/// batch does not ask Redis again until that much is free (at most what frees in one
/// horizon): on a saturated limit it makes one round trip per half batch instead of one per
/// cell, and refuses locally meanwhile, with that wait as `retry_after` (asking Redis again
/// after [`DENIAL_RECHECK`](crate::RedisRateLimiter::DENIAL_RECHECK) at most, for cells
/// another replica gave back).
///
/// **Measured** (`cargo bench -p tidewall-redis --bench lease`, three replica processes on
/// one 2-vCPU machine with Redis, a 100 000/s limit saturated by all three): 10.8–12.9
/// million decisions a second per replica, the fleet admitting 100 240–100 270/s (193–351
/// cells over the exact limit in 5 s, against a bound of 3 000); exact mode, each admission
/// a round trip, 8 600–13 000 decisions a second per replica. See `docs/BENCHMARKS.md`.
///
/// ```
/// use std::time::Duration;
/// use tidewall_redis::LeaseMode;
///
/// let lease = LeaseMode::new(200)?.horizon(Duration::from_millis(20));
/// assert_eq!(lease.max_batch(), 200);
/// # Ok::<(), tidewall::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseMode {
    max_batch: u32,
    horizon: Duration,
}

impl LeaseMode {
    /// Batches of at most `max_batch` cells (the accuracy bound's term per replica).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero `max_batch`.
    pub fn new(max_batch: u32) -> Result<Self, ConfigError> {
        if max_batch == 0 {
            return Err(ConfigError::Zero { field: "max_batch" });
        }
        Ok(Self {
            max_batch,
            horizon: Duration::from_millis(10),
        })
    }

    /// How long a batch should last at the replica's observed rate (default 10 ms; a zero
    /// horizon keeps batches at one cell unless the replica runs dry).
    #[must_use]
    pub fn horizon(mut self, horizon: Duration) -> Self {
        self.horizon = horizon;
        self
    }

    /// The most cells a replica holds at once.
    pub fn max_batch(&self) -> u32 {
        self.max_batch
    }
}

/// One replica's leased cells.
#[derive(Debug)]
pub(crate) struct Leased {
    mode: LeaseMode,
    /// Cells granted by Redis and not yet spent: never above `max_batch`.
    held: AtomicU64,
    /// The batch asked for next (adapted).
    target: AtomicU64,
    /// A background refill is under way.
    refilling: AtomicBool,
    /// How many times the cells were given back: a background refill started before a
    /// give-back does not fetch a batch after it.
    returns: AtomicU64,
    /// Until when Redis said no cell is free, in ns since `origin` (0: no denial).
    denied_until: AtomicU64,
    /// When to ask Redis again all the same, in ns since `origin`: cells given back by
    /// another replica may be free before `denied_until`.
    recheck_at: AtomicU64,
    origin: Instant,
    /// The cells that free up in one horizon (at least 1).
    horizon_cells: u64,
    /// One refill at a time, so the cells held never pass `max_batch`; a give-back holds it
    /// too. A refill's own task waits for it (within the refill's deadline), and so does a
    /// caller of [`return_unspent`](crate::RedisRateLimiter::return_unspent) (behind the
    /// refill under way, if any: bounded by that refill's deadline, not by the caller); a
    /// caller deciding never does.
    refill: tokio::sync::Mutex<Refills>,
    /// The outcome of the refill under way (or of the last one), for every caller waiting on
    /// it, and the refill's own deadline: its outcome is known by then.
    in_flight: Mutex<Option<(RefillWatch, Instant)>>,
    pub(crate) lease: redis::Script,
    pub(crate) give_back: redis::Script,
}

/// How a refill ended: the cells held just after it, or why Redis gave no batch.
pub(crate) type RefillOutcome = Result<u64, Unavailable>;

/// A refill's outcome, `None` while it runs.
pub(crate) type RefillWatch = watch::Receiver<Option<RefillOutcome>>;

/// What [`Leased::join_or_start`] found.
#[derive(Debug)]
pub(crate) enum Joined {
    /// A refill is under way: wait for its outcome, known by its deadline (the instant).
    Waiting(RefillWatch, Instant),
    /// None was: the caller starts one with the deadline it passed, and sends its outcome
    /// (the slot now holds the receiver, so later callers wait on it).
    Starting(watch::Sender<Option<RefillOutcome>>, RefillWatch),
}

/// What the refills learn the replica's rate from.
#[derive(Debug)]
pub(crate) struct Refills {
    /// When the last batch arrived, and the cells held just after it.
    last: Instant,
    held_after: u64,
}

impl Leased {
    /// Lease mode `mode` for a limit that frees a cell every `interval_us`.
    pub(crate) fn new(mode: LeaseMode, interval_us: u64) -> Self {
        let now = Instant::now();
        let horizon_us = u64::try_from(mode.horizon.as_micros()).unwrap_or(u64::MAX);
        let horizon_cells = (horizon_us / interval_us.max(1)).max(1);
        Self {
            mode,
            held: AtomicU64::new(0),
            target: AtomicU64::new(1),
            refilling: AtomicBool::new(false),
            returns: AtomicU64::new(0),
            denied_until: AtomicU64::new(0),
            recheck_at: AtomicU64::new(0),
            origin: now,
            horizon_cells,
            refill: tokio::sync::Mutex::new(Refills {
                last: now,
                held_after: 0,
            }),
            in_flight: Mutex::new(None),
            lease: redis::Script::new(LEASE),
            give_back: redis::Script::new(GIVE_BACK),
        }
    }

    pub(crate) fn max_batch(&self) -> u64 {
        u64::from(self.mode.max_batch)
    }

    /// Spends `cells` held cells if there are that many; returns the cells left after.
    #[inline]
    pub(crate) fn try_take(&self, cells: u64) -> Option<u64> {
        let mut held = self.held.load(Ordering::Acquire);
        while held >= cells {
            match self.held.compare_exchange_weak(
                held,
                held - cells,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(held - cells),
                Err(seen) => held = seen,
            }
        }
        None
    }

    /// Whether a replica left with `left` cells should fetch its next batch now (below half
    /// the batch), and no refill is under way: then it is marked under way.
    #[inline]
    pub(crate) fn should_refill(&self, left: u64) -> bool {
        left < self.target.load(Ordering::Relaxed).div_ceil(2)
            && !self.refilling.swap(true, Ordering::AcqRel)
    }

    /// The background refill is over.
    pub(crate) fn refilled(&self) {
        self.refilling.store(false, Ordering::Release);
    }

    /// The refill under way, to wait for; or, if none is, a new one for the caller to start,
    /// which must have its outcome by `end` (its deadline). A refill whose task ended without
    /// an outcome (its runtime shut down) is not under way.
    pub(crate) fn join_or_start(&self, end: Instant) -> Joined {
        let mut slot = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((outcome, end)) = slot.as_ref()
            && outcome.borrow().is_none()
            && outcome.has_changed().is_ok()
        {
            return Joined::Waiting(outcome.clone(), *end);
        }
        let (done, outcome) = watch::channel(None);
        *slot = Some((outcome.clone(), end));
        Joined::Starting(done, outcome)
    }

    /// The wait Redis gave for the next free cell, while it lasts and until its recheck
    /// ([`RedisRateLimiter::DENIAL_RECHECK`](crate::RedisRateLimiter::DENIAL_RECHECK)).
    pub(crate) fn denied_for(&self) -> Option<Duration> {
        let until = self.denied_until.load(Ordering::Acquire);
        let recheck_at = self.recheck_at.load(Ordering::Acquire);
        let now = nanos_since(self.origin);
        (until > now && recheck_at > now).then(|| Duration::from_nanos(until - now))
    }

    /// Takes every held cell (to give them back).
    pub(crate) fn take_all(&self) -> u64 {
        self.held.swap(0, Ordering::AcqRel)
    }

    /// How many times the cells were given back so far (for [`refill`](Self::refill)'s
    /// `since`).
    pub(crate) fn returns(&self) -> u64 {
        self.returns.load(Ordering::Acquire)
    }

    /// Takes every held cell to give them back, with no refill running meanwhile (the guard
    /// holds them off; refills started before are then skipped).
    pub(crate) async fn returning(&self) -> (tokio::sync::MutexGuard<'_, Refills>, u64) {
        let guard = self.refill.lock().await;
        self.returns.fetch_add(1, Ordering::AcqRel);
        (guard, self.take_all())
    }

    /// Puts back cells taken by [`take_all`](Self::take_all) that could not be given back.
    pub(crate) fn restore(&self, cells: u64) {
        self.held.fetch_add(cells, Ordering::AcqRel);
    }

    /// Fetches the next batch, one refill at a time, by `end` (its deadline): waits its turn
    /// until then ([`Unavailable::Timeout`] if a give-back holds it that long), then
    /// `ask(want, at_least)` runs the round trip for `want` cells (within what is left until
    /// `end`) and answers `(granted, wait_µs)`, the wait until `at_least` more are free. A
    /// refill ahead of need passes `since` ([`returns`](Self::returns) when it was started),
    /// and fetches nothing if the cells were given back meanwhile. Returns `ask`'s error when
    /// it failed; otherwise the cells held just after (at least `needed` unless Redis granted
    /// fewer).
    pub(crate) async fn refill<F, Fut>(
        &self,
        needed: u64,
        since: Option<u64>,
        end: Instant,
        ask: F,
    ) -> Result<u64, Unavailable>
    where
        F: FnOnce(u64, u64) -> Fut,
        Fut: Future<Output = Result<(u64, u64), Unavailable>>,
    {
        let turn = tokio::time::timeout_at(end.into(), self.refill.lock());
        let mut refills = turn.await.map_err(|_| Unavailable::Timeout)?;
        let held = self.held.load(Ordering::Acquire);
        if since.is_some_and(|since| since != self.returns()) {
            return Ok(held);
        }
        if held >= needed.max(1) && held >= self.target.load(Ordering::Relaxed).div_ceil(2) {
            return Ok(held); // another refill got here first
        }
        if self.denied_for().is_some() {
            return Ok(held);
        }
        let now = Instant::now();
        // The rate since the last batch: what was spent of it, over the time since.
        let spent = refills.held_after.saturating_sub(held);
        let elapsed = now.saturating_duration_since(refills.last).as_nanos();
        let max = self.max_batch();
        let mut target = if elapsed > 0 {
            // What it spends in `horizon` at that rate, rounded up.
            let batch = (u128::from(spent) * self.mode.horizon.as_nanos()).div_ceil(elapsed);
            u64::try_from(batch).unwrap_or(u64::MAX).min(max)
        } else {
            max
        };
        if held == 0 && refills.held_after > 0 {
            // Ran dry before this batch: twice the last one.
            target = target.max(self.target.load(Ordering::Relaxed).saturating_mul(2));
        }
        let target = target.clamp(needed.max(1), max.max(needed));
        self.target.store(target, Ordering::Relaxed);
        let want = target.saturating_sub(held);
        if want == 0 {
            return Ok(held);
        }
        // A replica that has run dry and gets less than half its batch does not come back
        // for more until that much is free (or what frees in one horizon, for a slow limit):
        // a saturated limit then costs one round trip per half batch, not per cell.
        let at_least = if held == 0 {
            want.div_ceil(2).min(self.horizon_cells).max(needed).max(1)
        } else {
            1
        };
        let (granted, wait_us) = ask(want, at_least).await?;
        // Never above the ask, so never above `max_batch` held.
        let granted = granted.min(want);
        let held_after = self.held.fetch_add(granted, Ordering::AcqRel) + granted;
        *refills = Refills {
            last: Instant::now(),
            held_after,
        };
        if granted < at_least {
            let now = nanos_since(self.origin);
            let recheck = crate::RedisRateLimiter::DENIAL_RECHECK.as_nanos();
            let recheck_at = now.saturating_add(u64::try_from(recheck).unwrap_or(u64::MAX));
            self.recheck_at.store(recheck_at, Ordering::Release);
            let until = now.saturating_add(wait_us.saturating_mul(1_000)).max(1);
            self.denied_until.store(until, Ordering::Release);
        }
        Ok(held_after)
    }
}

fn nanos_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
