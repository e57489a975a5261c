//! The one engine behind every keyed policy: a sharded hash table holding at most `max_keys`
//! entries, which frees room only by evicting entries that say they may go.
//!
//! Each value answers [`Evict::eviction`]: `Now` (forgetting it changes nothing the caller can
//! observe, or its owner accepts the loss), `At(t)` (not before `t`) or `Blocked` (something
//! outside the table still depends on it: a permit, a waiter, an open breaker). A full shard
//! sweeps out what may go; if nothing may, the new key is refused with the earliest time
//! anything could. A shard of values only time frees (rate-limit keys) is not swept again
//! before then, unless the entry that time came from is used meanwhile; other shards are
//! swept on every refusal (O(shard size), only while full).
//!
//! Owners read their clock *inside* [`KeyedMap::entry`] (under the shard lock): a reading
//! taken before the lock could be older than the one a concurrent sweep used, and an entry
//! evicted at that later time might not yet be evictable at ours.

use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::ConfigError;
use crate::sync::{AtomicU64, Mutex, Ordering::Relaxed, lock};

/// Keys per shard we aim for before adding shards (up to [`MAX_SHARDS`]).
const KEYS_PER_SHARD: usize = 256;
const MAX_SHARDS: usize = 64;

/// The table's counters on a keyed front whose shared state holds the table as `keys`;
/// `$what` names what a key holds besides its table slot, for `allocated_bytes`' docs.
macro_rules! keyed_table_accessors {
    ($what:literal) => {
        /// Keys held now.
        pub fn len(&self) -> usize {
            self.shared.keys.len()
        }

        /// Whether no key is held.
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }

        /// Keys forgotten so far.
        pub fn evicted(&self) -> u64 {
            self.shared.keys.evicted()
        }

        /// The most keys held at once: the `max_keys` it was built with.
        pub fn max_keys(&self) -> usize {
            self.shared.keys.max_keys()
        }

        #[doc = concat!("Bytes the key table holds, ", $what, " (for memory accounting).")]
        pub fn allocated_bytes(&self) -> usize {
            self.shared.keys.allocated_bytes()
        }
    };
}

/// When an entry may be forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eviction {
    /// Now.
    Now,
    /// From this time on (nanoseconds on the owner's clock).
    At(u64),
    /// Not while something outside the table depends on it; no time is known.
    Blocked,
}

/// A value that knows when it may be evicted.
pub(crate) trait Evict {
    /// Whether only time makes a value evictable sooner than its `At` (a rate limiter's
    /// key): then a full shard need not be swept again before the earliest `At`. A value that
    /// something else frees (a permit released, a breaker reset) leaves it false, and a full
    /// shard of them is swept on every refusal.
    const ONLY_TIME_FREES: bool = false;

    fn eviction(&self, now: u64) -> Eviction;
}

/// The entry [`KeyedMap::entry`] found for a key, or its absence.
pub(crate) enum Slot<'a, V> {
    Found(&'a mut V),
    Vacant,
}

/// A new key met a full shard with nothing evictable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full {
    /// The earliest an entry of the shard may be evicted; `None` if all are blocked.
    pub(crate) retry_after: Option<Duration>,
}

impl Full {
    /// The refusal a keyed table gives the new key, counted in the table's `rejections`.
    pub(crate) fn refuse<O>(
        self,
        rejections: &crate::telemetry::PolicyTelemetry,
    ) -> Result<O, crate::Rejected> {
        let rejected = crate::Rejected::KeysFull {
            retry_after: self.retry_after,
        };
        rejections.record(&rejected, None);
        Err(rejected)
    }
}

struct Shard<K, V> {
    table: HashTable<(K, V)>,
    /// The most entries this shard holds: the shards' capacities add up to `max_keys` exactly.
    capacity: usize,
    /// Until when this full shard refuses new keys without sweeping (zero: sweep each time).
    full_until: u64,
    /// What the refusals until `full_until` report.
    full_hint: Option<u64>,
}

pub(crate) struct KeyedMap<K, V> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    max_keys: usize,
    hasher: DefaultHashBuilder,
    evicted: AtomicU64,
}

impl<K: Hash + Eq + Clone, V: Evict> KeyedMap<K, V> {
    /// A table for at most `max_keys` keys (allocated as keys arrive).
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for `max_keys == 0`.
    pub(crate) fn new(max_keys: usize) -> Result<Self, ConfigError> {
        if max_keys == 0 {
            return Err(ConfigError::Zero { field: "max_keys" });
        }
        let shard_count = (max_keys / KEYS_PER_SHARD)
            .next_power_of_two()
            .clamp(1, MAX_SHARDS);
        // The bound split as evenly as whole keys allow: the first `rest` shards hold one
        // more (a rounded-up split overflows for bounds near usize::MAX).
        let (base, rest) = (max_keys / shard_count, max_keys % shard_count);
        let shards = (0..shard_count)
            .map(|i| {
                Mutex::new(Shard {
                    table: HashTable::new(),
                    capacity: base + usize::from(i < rest),
                    full_until: 0,
                    full_hint: None,
                })
            })
            .collect();
        Ok(Self {
            shards,
            max_keys,
            hasher: DefaultHashBuilder::default(),
            evicted: AtomicU64::new(0),
        })
    }

    /// Runs `f` on `key`'s entry or its vacancy, under the shard lock, with `now()` read
    /// under that lock. For a vacancy, `f` returning a value inserts it, after evicting what
    /// may go if the shard is full.
    ///
    /// # Errors
    ///
    /// [`Full`] when a new value could not be stored; `f`'s output is then dropped, so it
    /// must not stand for anything the dropped value would have to undo.
    pub(crate) fn entry<O>(
        &self,
        key: &K,
        now: impl FnOnce() -> u64,
        f: impl FnOnce(Slot<'_, V>, u64) -> (O, Option<V>),
    ) -> Result<O, Full> {
        let hash = self.hasher.hash_one(key);
        let mut guard = lock(self.shard(hash));
        let shard = &mut *guard;
        let now = now();
        if let Some((_, value)) = shard.table.find_mut(hash, |(k, _)| k == key) {
            // The key a full shard's refusals are timed by may rest later once used: their
            // hint is then worked out again, so it stays exact. (Only if it moved: a refused
            // retry of that key leaves the cached answer standing.)
            let timing = Eviction::At(shard.full_until);
            let times_refusals = shard.full_until != 0 && value.eviction(now) == timing;
            let (output, _) = f(Slot::Found(&mut *value), now);
            if times_refusals && value.eviction(now) != timing {
                shard.full_until = 0;
                shard.full_hint = None;
            }
            return Ok(output);
        }
        let (output, value) = f(Slot::Vacant, now);
        if let Some(value) = value {
            self.make_room(shard, now)?;
            let hasher = &self.hasher;
            shard
                .table
                .insert_unique(hash, (key.clone(), value), |(k, _)| hasher.hash_one(k));
        }
        Ok(output)
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard<K, V>> {
        // Every bit of the hash, mixed (Fibonacci hashing) into the top bits the shard is
        // picked from: taking some of the hash's own bits spread a run of integer keys
        // unevenly for some seeds (a table of 1,000 holding 773 of them). The mix fixes no
        // bit of the hash, so hashbrown's low bits (index) and top 7 (tags) keep their
        // entropy inside a shard.
        let mixed = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let index = usize::try_from(mixed >> 48).unwrap_or(0) % self.shards.len();
        &self.shards[index]
    }

    fn make_room(&self, shard: &mut Shard<K, V>, now: u64) -> Result<(), Full> {
        if shard.table.len() < shard.capacity {
            return Ok(());
        }
        let refusal = |hint: Option<u64>| Full {
            retry_after: hint.map(|at| Duration::from_nanos(at.saturating_sub(now))),
        };
        if now < shard.full_until {
            return Err(refusal(shard.full_hint));
        }
        self.sweep(shard, now);
        if shard.table.len() < shard.capacity {
            return Ok(());
        }
        let (mut first, mut blocked) = (None::<u64>, false);
        for (_, value) in shard.table.iter() {
            match value.eviction(now) {
                Eviction::At(at) => first = Some(first.map_or(at, |f| f.min(at))),
                Eviction::Blocked => blocked = true,
                Eviction::Now => {}
            }
        }
        // When only time frees entries (and a key used meanwhile only goes later), refusals
        // need not sweep again before the first of them: the hint is a lower bound. Anything
        // else (a permit released, a breaker reset) happens out of the table's sight, so a
        // shard of such values is swept on every refusal.
        shard.full_until = if V::ONLY_TIME_FREES && !blocked {
            first.unwrap_or(0)
        } else {
            0
        };
        shard.full_hint = first;
        Err(refusal(first))
    }

    fn sweep(&self, shard: &mut Shard<K, V>, now: u64) -> usize {
        let before = shard.table.len();
        shard
            .table
            .retain(|(_, v)| v.eviction(now) != Eviction::Now);
        let dropped = before - shard.table.len();
        self.evicted.fetch_add(dropped as u64, Relaxed);
        dropped
    }

    /// Evicts every entry that may go now; returns how many went.
    pub(crate) fn retain_evictable(&self, mut now: impl FnMut() -> u64) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let mut shard = lock(shard);
                let now = now();
                self.sweep(&mut shard, now)
            })
            .sum()
    }

    /// Runs `f` on `key`'s entry, if it is held.
    pub(crate) fn get<O>(&self, key: &K, f: impl FnOnce(&V) -> O) -> Option<O> {
        let hash = self.hasher.hash_one(key);
        let shard = lock(self.shard(hash));
        shard.table.find(hash, |(k, _)| k == key).map(|(_, v)| f(v))
    }
}

impl<K, V> KeyedMap<K, V> {
    /// `f` of every entry held, one shard at a time (a key made meanwhile in a shard
    /// already visited is missed: callers publish what new keys read first).
    pub(crate) fn each<O>(&self, mut f: impl FnMut(&V) -> O) -> Vec<O> {
        self.each_found(|_, v| Some(f(v)))
    }

    /// What `f` finds in each key and entry held (as [`each`](Self::each), one shard at a
    /// time), keeping the `Some`s.
    pub(crate) fn each_found<O>(&self, mut f: impl FnMut(&K, &V) -> Option<O>) -> Vec<O> {
        let mut found = Vec::new();
        for shard in &*self.shards {
            found.extend(lock(shard).table.iter().filter_map(|(k, v)| f(k, v)));
        }
        found
    }

    /// Runs `first`, then `each` on every entry with what `first` made, with every shard locked throughout (in
    /// index order): no decision, which holds one shard's lock, sees the change half made.
    pub(crate) fn all_at_once<T>(
        &self,
        first: impl FnOnce() -> T,
        mut each: impl FnMut(&T, &mut V),
    ) -> T {
        let mut shards: Vec<_> = self.shards.iter().map(lock).collect();
        let made = first();
        for shard in &mut shards {
            for (_, value) in shard.table.iter_mut() {
                each(&made, value);
            }
            // The entries changed: when a full shard frees up is to be found again.
            shard.full_until = 0;
            shard.full_hint = None;
        }
        made
    }

    /// Entries held now.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).table.len()).sum()
    }

    /// The bound this table was built with.
    pub(crate) fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// Entries evicted so far.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Relaxed)
    }

    /// Bytes the tables hold (values' own allocations not included).
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| lock(s).table.allocation_size())
            .sum()
    }
}
