//! The keyed rate limiter: one GCRA limit per key, in bounded memory.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use hashbrown::DefaultHashBuilder;
use hashbrown::HashTable;
use tidewall_core::gcra::Gcra;

use super::clock::LimiterClock;
use super::direct::{RateLimiterBuilder, rejection};
use super::wait::Waiting;
use crate::admission::Wait;
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::{Arc, AtomicU64, Mutex, Ordering::Relaxed, lock};
use crate::{ConfigError, Deadline, Rejected};

/// Keys per shard we aim for before adding shards (up to [`MAX_SHARDS`]).
const KEYS_PER_SHARD: usize = 256;
const MAX_SHARDS: usize = 64;

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

struct Shard<K> {
    table: HashTable<(K, u64)>,
    /// The most keys this shard holds: the shards' capacities add up to `max_keys` exactly.
    capacity: usize,
    /// When this (full) shard's first key rests: no sweep can free anything before then.
    full_until: u64,
}

struct Keyed<K, R> {
    gcra: Gcra,
    shards: Box<[Mutex<Shard<K>>]>,
    max_keys: usize,
    hasher: DefaultHashBuilder,
    clock: LimiterClock,
    rt: R,
    jitter: Duration,
    // Each wait draws its jitter from the next seed; the first is random, so limiters built
    // alike do not wake their waiters in lockstep.
    next_seed: AtomicU64,
    evicted: AtomicU64,
    name: &'static str,
    rejections: crate::telemetry::Rejections,
}

impl<K, R: Clock> Clone for KeyedRateLimiter<K, R> {
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
            .field("gcra", &self.shared.gcra)
            .field("max_keys", &self.shared.max_keys)
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

impl KeyedRateLimiter<()> {
    /// `count` cells per `period` for each key, on the default runtime; burst defaults to
    /// `count`. The key type is chosen by [`build`](KeyedRateLimiterBuilder::build) (usually
    /// inferred from the first `check_key`).
    pub fn builder(count: u32, period: Duration) -> KeyedRateLimiterBuilder {
        KeyedRateLimiterBuilder {
            rate: super::RateLimiter::builder(count, period),
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

    /// The most keys held at once, exactly (any `usize` but zero: the tables grow as keys
    /// arrive, so a large bound costs nothing until it is used).
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// The most random delay added to each wait.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.rate = self.rate.jitter(jitter);
        self
    }

    /// A name for metric labels.
    pub fn name(mut self, name: &'static str) -> Self {
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
        let (gcra, jitter) = self.rate.gcra()?;
        if self.max_keys == 0 {
            return Err(ConfigError::Zero { field: "max_keys" });
        }
        let shard_count = (self.max_keys / KEYS_PER_SHARD)
            .next_power_of_two()
            .clamp(1, MAX_SHARDS);
        // The bound split as evenly as whole keys allow: the first `rest` shards hold one
        // more (a rounded-up split overflowed for bounds near usize::MAX).
        let (base, rest) = (self.max_keys / shard_count, self.max_keys % shard_count);
        let shards = (0..shard_count)
            .map(|i| {
                Mutex::new(Shard {
                    table: HashTable::new(),
                    capacity: base + usize::from(i < rest),
                    full_until: 0,
                })
            })
            .collect();
        let rate = self.rate;
        Ok(KeyedRateLimiter {
            shared: Arc::new(Keyed {
                gcra,
                shards,
                max_keys: self.max_keys,
                hasher: DefaultHashBuilder::default(),
                clock: LimiterClock::new(&rate.rt),
                rt: rate.rt,
                jitter,
                next_seed: AtomicU64::new(rate.seed.unwrap_or_else(crate::seed::fresh_seed)),
                evicted: AtomicU64::new(0),
                name: rate.name,
                rejections: crate::telemetry::Rejections::new("keyed_rate", rate.name),
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

    /// Admits `cells` for `key` at once (all or nothing).
    ///
    /// # Errors
    ///
    /// As [`check_key`](Self::check_key), plus [`Rejected::InsufficientCapacity`] when
    /// `cells` exceeds the burst.
    pub fn check_key_n(&self, key: &K, cells: u32) -> Result<(), Rejected> {
        self.decide(key, cells)
            .inspect_err(|rejected| self.shared.rejections.record(rejected))
    }

    /// The decision without telemetry (waits count a rejection only when finally refused).
    fn decide(&self, key: &K, cells: u32) -> Result<(), Rejected> {
        let shared = &*self.shared;
        let hash = shared.hasher.hash_one(key);
        // hashbrown indexes with the low bits and tags entries with the top 7: pick the shard
        // from bits in between, so neither loses entropy inside a shard.
        let shard_index = usize::try_from((hash >> 32) & 0xFFFF).unwrap_or(0) % shared.shards.len();
        let mut shard = lock(&shared.shards[shard_index]);
        // Read the clock under the shard lock: a reading taken before it could be older than
        // the one a concurrent eviction used, and a key evicted as rested at that later time
        // might not be rested yet at ours — eviction would then be observable.
        let now = shared.clock.nanos(&shared.rt);
        if let Some((_, tat)) = shard.table.find_mut(hash, |(k, _)| k == key) {
            return shared
                .gcra
                .decide(*tat, now, cells)
                .map(|next| *tat = next)
                .map_err(rejection);
        }
        match shared.gcra.decide(0, now, cells) {
            Err(denied) => Err(rejection(denied)),
            Ok(next) => self.insert(&mut shard, hash, key, next, now),
        }
    }

    fn insert(
        &self,
        shard: &mut Shard<K>,
        hash: u64,
        key: &K,
        tat: u64,
        now: u64,
    ) -> Result<(), Rejected> {
        let shared = &*self.shared;
        if shard.table.len() >= shard.capacity {
            if now < shard.full_until {
                return Err(Rejected::RateLimited {
                    retry_after: Duration::from_nanos(shard.full_until - now),
                });
            }
            let before = shard.table.len();
            shard.table.retain(|(_, tat)| !Gcra::is_rested(*tat, now));
            shared
                .evicted
                .fetch_add((before - shard.table.len()) as u64, Relaxed);
            if shard.table.len() >= shard.capacity {
                let first_rest = shard.table.iter().map(|(_, tat)| *tat).min().unwrap_or(now);
                shard.full_until = first_rest;
                return Err(Rejected::RateLimited {
                    retry_after: Duration::from_nanos(first_rest.saturating_sub(now)),
                });
            }
        }
        let hasher = &shared.hasher;
        shard
            .table
            .insert_unique(hash, (key.clone(), tat), |(k, _)| hasher.hash_one(k));
        Ok(())
    }

    /// Waits until `key` is admitted one cell, but not past `deadline`.
    ///
    /// **Cancel safety:** nothing is reserved while waiting; dropping the future loses nothing.
    ///
    /// # Errors
    ///
    /// [`Rejected::DeadlineExceeded`] as soon as the wait is known to end past the deadline.
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
            self.shared.jitter,
            seed,
        );
        async move {
            let mut waiting = std::pin::pin!(waiting);
            std::future::poll_fn(|cx| waiting.as_mut().poll_until(cx, || self.decide(key, 1)))
                .await
                .inspect_err(|rejected| self.shared.rejections.record(rejected))
        }
    }

    /// Forgets every key that has fully rested (lossless: see the type's docs); returns how
    /// many were dropped. The limiter also does this by itself whenever a shard fills up.
    pub fn retain_recent(&self) -> usize {
        let mut dropped = 0;
        for shard in &self.shared.shards {
            let mut shard = lock(shard);
            let now = self.shared.clock.nanos(&self.shared.rt);
            let before = shard.table.len();
            shard.table.retain(|(_, tat)| !Gcra::is_rested(*tat, now));
            dropped += before - shard.table.len();
        }
        self.shared.evicted.fetch_add(dropped as u64, Relaxed);
        dropped
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.shared.shards.iter().map(|s| lock(s).table.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys evicted so far because they had rested.
    pub fn evicted(&self) -> u64 {
        self.shared.evicted.load(Relaxed)
    }

    /// The most keys this limiter holds: the `max_keys` it was built with.
    pub fn max_keys(&self) -> usize {
        self.shared.max_keys
    }

    /// Bytes allocated by the key tables now (for memory accounting).
    pub fn allocated_bytes(&self) -> usize {
        self.shared
            .shards
            .iter()
            .map(|s| lock(s).table.allocation_size())
            .sum()
    }
}
