//! The keyed rate limiter: one GCRA limit per key, in bounded memory.

use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use tidewall_core::gcra::Gcra;

use super::clock::LimiterClock;
use super::direct::{RateLimiterBuilder, rejection};
use super::wait::Waiting;
use crate::admission::Wait;
use crate::keyed_map::{Evict, Eviction, KeyedMap, Slot};
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::{Arc, AtomicU64, Ordering::Relaxed};
use crate::{ConfigError, Deadline, Rejected};

/// A GCRA limit per key (per client, per tenant, per IP), holding at most `max_keys` keys.
///
/// **Bounded memory, lossless eviction.** A key whose state is fully rested (it would admit a
/// full burst right now) is indistinguishable from a key never seen, so such keys are evicted
/// whenever a shard fills up, and by [`retain_recent`](Self::retain_recent). If a shard is
/// full of keys that are *not* rested, a new key is rejected with
/// [`Rejected::RateLimited`] whose `retry_after` is when the first of them rests: the limiter
/// never forgets a key early (which would hand out an extra burst) and never grows past its
/// bound.
///
/// Memory: one entry is the key plus a `u64` and one control byte in a sharded
/// [`hashbrown`] table; for `u64` keys that measures 17–40 B per key depending on the table's
/// fill (see `tests/rate.rs` and docs/BENCHMARKS.md).
///
/// ```
/// use std::time::Duration;
/// use tidewall::rate::KeyedRateLimiter;
///
/// let limiter = KeyedRateLimiter::builder(1, Duration::from_secs(1)).burst(1).max_keys(10_000).build::<&str>()?;
/// assert!(limiter.check_key(&"alice").is_ok());
/// assert!(limiter.check_key(&"alice").is_err());
/// assert!(limiter.check_key(&"bob").is_ok(), "every key has its own limit");
/// # Ok::<(), tidewall::ConfigError>(())
/// ```
pub struct KeyedRateLimiter<K, R = DefaultRuntime> {
    shared: Arc<Keyed<K, R>>,
}

/// A key's theoretical arrival time: rested (and so evictable without loss) once passed.
struct Tat(u64);

impl Evict for Tat {
    const ONLY_TIME_FREES: bool = true;

    fn eviction(&self, now: u64) -> Eviction {
        if Gcra::is_rested(self.0, now) {
            Eviction::Now
        } else {
            Eviction::At(self.0)
        }
    }
}

struct Keyed<K, R> {
    /// The limit's words ([`Gcra::to_words`]): written only with every shard locked, and read
    /// under a shard's lock, so a decision sees one limit whole.
    limit: [AtomicU64; 2],
    keys: KeyedMap<K, Tat>,
    clock: LimiterClock,
    rt: R,
    /// Nanoseconds.
    jitter: AtomicU64,
    /// Nanoseconds, `NO_MAX_WAIT` for none.
    max_wait: AtomicU64,
    // Each wait draws its jitter from the next seed; the first is random, so limiters built
    // alike do not wake their waiters in lockstep.
    next_seed: AtomicU64,
    name: crate::Name,
    rejections: crate::telemetry::PolicyTelemetry,
}

impl<K, R> Clone for KeyedRateLimiter<K, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, R: Clock> std::fmt::Debug for KeyedRateLimiter<K, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("name", &self.shared.name)
            .field("gcra", &self.shared.limit_whole())
            .field("max_keys", &self.shared.keys.max_keys())
            .finish_non_exhaustive()
    }
}

/// Configures a [`KeyedRateLimiter`]: the rate settings plus `max_keys` (default 100,000).
#[must_use]
#[derive(Debug, Clone)]
pub struct KeyedRateLimiterBuilder<R = DefaultRuntime> {
    rate: RateLimiterBuilder<R>,
    max_keys: usize,
}

impl<R> KeyedRateLimiterBuilder<R> {
    /// Each key's settings, as [`KeyedRateLimiter::reconfigure`] takes them.
    #[cfg(feature = "http")]
    pub(crate) fn per_key(&self) -> &RateLimiterBuilder<R> {
        &self.rate
    }
}

impl KeyedRateLimiter<()> {
    /// `count` cells per `period` for each key, on the default runtime; burst defaults to
    /// `count`. The key type is chosen by [`build`](KeyedRateLimiterBuilder::build) (usually
    /// inferred from the first `check_key`).
    pub fn builder(count: u32, period: Duration) -> KeyedRateLimiterBuilder {
        super::RateLimiter::builder(count, period).keyed()
    }
}

impl<R> KeyedRateLimiterBuilder<R> {
    pub(super) fn new(rate: RateLimiterBuilder<R>) -> Self {
        Self {
            rate,
            max_keys: 100_000,
        }
    }
}

impl<R> KeyedRateLimiterBuilder<R> {
    /// Cells each key may pass at once from rest.
    pub fn burst(mut self, burst: u32) -> Self {
        self.rate = self.rate.burst(burst);
        self
    }

    /// The most keys held at once, a hard bound (default 100,000; any `usize` but zero: the
    /// table grows as keys arrive). Keys are spread by hash over up to 64 shards of an equal
    /// share of the bound (one shard up to 511 keys), and a new key is refused when its own
    /// shard is full of keys that may not be forgotten: so a table of busy keys refuses new
    /// ones as soon as one shard is full. With keys spread evenly by hash that is at exactly
    /// `max_keys` below 512 keys (one shard), and otherwise typically (the median of random
    /// spreads) at 94 % of the bound for 1,000 keys, 83 % for 10,000 (64 shards of 156; 75 %
    /// in an unlucky spread), 94 % for 100,000 and 98 % for 1,000,000.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// The most random delay added to each wait.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.rate = self.rate.jitter(jitter);
        self
    }

    /// The longest a caller waits for its key's cell, as
    /// [`RateLimiterBuilder::max_wait`] says (default `None`: as long as the caller's
    /// deadline allows).
    pub fn max_wait(mut self, wait: impl Into<Option<Duration>>) -> Self {
        self.rate = self.rate.max_wait(wait);
        self
    }

    /// A name for metric labels.
    pub fn name(mut self, name: impl Into<crate::Name>) -> Self {
        self.rate = self.rate.name(name);
        self
    }

    /// See [`RateLimiterBuilder::seed`](super::RateLimiterBuilder::seed).
    pub fn seed(mut self, seed: u64) -> Self {
        self.rate = self.rate.seed(seed);
        self
    }

    /// Runs on another runtime.
    pub fn runtime<R2>(self, rt: R2) -> KeyedRateLimiterBuilder<R2> {
        KeyedRateLimiterBuilder {
            rate: self.rate.runtime(rt),
            max_keys: self.max_keys,
        }
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// As the [direct limiter](RateLimiterBuilder::build), plus [`ConfigError::Zero`] for
    /// `max_keys == 0`.
    pub fn build<K: Hash + Eq + Clone>(self) -> Result<KeyedRateLimiter<K, R>, ConfigError>
    where
        R: Clock,
    {
        let (gcra, jitter, max_wait) = self.rate.checked()?;
        let keys = KeyedMap::new(self.max_keys)?;
        let rate = self.rate;
        Ok(KeyedRateLimiter {
            shared: Arc::new(Keyed {
                limit: gcra.to_words().map(AtomicU64::new),
                keys,
                clock: LimiterClock::new(&rate.rt),
                rt: rate.rt,
                jitter: AtomicU64::new(jitter),
                max_wait: AtomicU64::new(max_wait),
                next_seed: AtomicU64::new(rate.seed.unwrap_or_else(crate::seed::fresh_seed)),
                rejections: crate::telemetry::PolicyTelemetry::new(
                    "keyed_rate",
                    &rate.name,
                    &super::direct::REFUSALS,
                )
                .with_listener(rate.events),
                name: rate.name,
            }),
        })
    }
}

impl<K: Hash + Eq + Clone, R: Clock> KeyedRateLimiter<K, R> {
    /// Admits one cell for `key` now, or says how long until it would be.
    ///
    /// # Errors
    ///
    /// [`Rejected::RateLimited`] with the exact `retry_after` (also when the key is new and
    /// its shard is full of keys that have not rested yet).
    pub fn check_key(&self, key: &K) -> Result<(), Rejected> {
        self.check_key_n(key, 1)
    }

    /// Admits `cells` for `key` at once (all or nothing). Zero cells take nothing and always
    /// pass, for a new key in a full shard too, and store nothing.
    ///
    /// # Errors
    ///
    /// As [`check_key`](Self::check_key), plus [`Rejected::InsufficientCapacity`] when
    /// `cells` exceeds the burst.
    pub fn check_key_n(&self, key: &K, cells: u32) -> Result<(), Rejected> {
        self.decide(key, cells)
            .inspect_err(|rejected| self.shared.rejections.refused(rejected, None))
    }

    /// One cell for `key` now, without counting a refusal (for a caller that then waits,
    /// which counts).
    #[cfg(feature = "http")]
    pub(crate) fn check_key_quiet(&self, key: &K) -> Result<(), Rejected> {
        self.decide(key, 1)
    }

    /// The decision without telemetry (waits count a rejection only when finally refused).
    fn decide(&self, key: &K, cells: u32) -> Result<(), Rejected> {
        if cells == 0 {
            return Ok(());
        }
        let shared = &*self.shared;
        let decided = shared.keys.entry(
            key,
            || shared.clock.nanos(&shared.rt),
            |slot, now| {
                let gcra = shared.limit();
                match slot {
                    Slot::Found(Tat(tat)) => {
                        (gcra.decide(*tat, now, cells).map(|next| *tat = next), None)
                    }
                    // Only an admitted new key is stored: a refused one would be rested anyway.
                    Slot::Vacant => match gcra.decide(0, now, cells) {
                        Ok(next) => (Ok(()), Some(Tat(next))),
                        Err(denied) => (Err(denied), None),
                    },
                }
            },
        );
        match decided {
            Ok(verdict) => verdict.map_err(rejection),
            // Keys that have not rested are never forgotten early (that would hand out an
            // extra burst): the new key waits until the first of them rests.
            Err(full) => Err(Rejected::RateLimited {
                retry_after: full.retry_after.unwrap_or_default(),
            }),
        }
    }

    /// Waits until `key` is admitted one cell, but not past `deadline`.
    ///
    /// **Cancel safety:** nothing is reserved while waiting; dropping the future loses nothing.
    ///
    /// # Errors
    ///
    /// [`Rejected::DeadlineExceeded`] as soon as the wait is known to end past the deadline;
    /// [`Rejected::RateLimited`] when it would be longer than a set
    /// [`max_wait`](KeyedRateLimiterBuilder::max_wait) (checked first: a wait past both is
    /// `RateLimited`, with the hint).
    pub fn until_key_ready_before<'a>(
        &'a self,
        key: &'a K,
        deadline: Deadline,
    ) -> impl Future<Output = Result<(), Rejected>> + Send + 'a
    where
        K: Send + Sync,
    {
        let seed = self.shared.next_seed.fetch_add(1, Relaxed);
        let waiting = Waiting::new(
            self.shared.rt.clone(),
            Wait::Until(deadline),
            self.shared.jitter.load(Relaxed),
            self.shared.max_wait.load(Relaxed),
            seed,
        );
        async move {
            let mut waiting = std::pin::pin!(waiting);
            std::future::poll_fn(|cx| waiting.as_mut().poll_until(cx, || self.decide(key, 1)))
                .await
                .inspect_err(|rejected| self.shared.rejections.refused(rejected, None))
        }
    }

    /// Forgets every key that has fully rested (lossless: see the type's docs); returns how
    /// many were dropped. The limiter also does this by itself whenever a shard fills up.
    pub fn retain_recent(&self) -> usize {
        let shared = &*self.shared;
        shared
            .keys
            .retain_evictable(|| shared.clock.nanos(&shared.rt))
    }

    keyed_table_accessors!("each key's state included");

    /// The name its events and metrics carry.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::rate::KeyedRateLimiter;
    ///
    /// let per_user = KeyedRateLimiter::builder(5, Duration::from_secs(1)).name("users").build::<u64>()?;
    /// assert_eq!(per_user.name(), "users");
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The limit every key follows now.
    pub fn gcra(&self) -> Gcra {
        self.shared.limit_whole()
    }

    /// Applies `settings` (count, period, burst, jitter, `max_wait`) to every key in place,
    /// validated as [`build`](KeyedRateLimiterBuilder::build) validates them; on an error
    /// nothing changes. Its name, `max_keys`, seed and runtime are not changed (the table's
    /// bound is fixed at build).
    ///
    /// As [`RateLimiter::reconfigure`](super::RateLimiter::reconfigure) does for its one
    /// limit, each key keeps the cells it was admitted, as that many cells under the new
    /// limit, so a change never hands a key a fresh burst (up to the same 584-year cap on a
    /// debt). The change is atomic: no decision pairs one limit with the other's state, and a
    /// full table's hint for new keys is worked out again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::rate::{KeyedRateLimiter, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let per_user = KeyedRateLimiter::builder(2, Duration::from_secs(1)).build::<&str>()?;
    /// per_user.check_key_n(&"alice", 2)?;
    /// per_user.reconfigure(RateLimiter::builder(10, Duration::from_secs(1)))?;
    /// // The 2 cells alice took stay taken: 8 of the new burst of 10 are left.
    /// assert!(per_user.check_key_n(&"alice", 9).is_err());
    /// per_user.check_key_n(&"alice", 8)?;
    /// per_user.check_key_n(&"bob", 10)?; // a new key gets the whole new burst
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`RateLimiterBuilder::build`].
    pub fn reconfigure<R2>(&self, settings: RateLimiterBuilder<R2>) -> Result<(), ConfigError> {
        let (new, jitter, max_wait) = settings.checked()?;
        let shared = &*self.shared;
        shared.jitter.store(jitter, Relaxed);
        shared.max_wait.store(max_wait, Relaxed);
        shared.keys.all_at_once(
            || {
                let (old, now) = (shared.limit(), shared.clock.nanos(&shared.rt));
                for (word, value) in shared.limit.iter().zip(new.to_words()) {
                    word.store(value, Relaxed);
                }
                (old, now)
            },
            |&(old, now), Tat(tat)| {
                if *tat > now {
                    *tat = super::direct::rescaled(*tat, now, &old, &new);
                }
            },
        );
        Ok(())
    }
}

impl<K, R> Keyed<K, R> {
    /// The limit in force. Call it under a shard's lock: the words are written only with
    /// every shard's lock held.
    fn limit(&self) -> Gcra {
        Gcra::from_words([self.limit[0].load(Relaxed), self.limit[1].load(Relaxed)])
    }

    /// The limit in force, read with every shard locked (as it is written).
    fn limit_whole(&self) -> Gcra {
        self.keys.all_at_once(|| self.limit(), |_, _| {})
    }
}
