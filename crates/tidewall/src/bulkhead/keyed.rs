//! A bulkhead per key, in bounded memory.

use std::fmt;
use std::future::Future;
use std::hash::Hash;

use super::{Bulkhead, BulkheadBuilder, OwnedPermit};
use crate::keyed_map::{Evict, Eviction, KeyedMap, Slot};
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::{Arc, Mutex, lock};
use crate::{ConfigError, Deadline, Error, Name, Rejected};

/// The refusal a keyed table gives a new key, as its telemetry registers it.
const KEYS_FULL: Rejected = Rejected::KeysFull { retry_after: None };

/// A [`Bulkhead`] per key (per host, per tenant), each with the same settings and its own
/// slots and queue, holding at most `max_keys` keys.
///
/// Build it from a bulkhead's builder with [`keyed`](BulkheadBuilder::keyed). A key's
/// bulkhead is made on its first call and behaves exactly as a [`Bulkhead`].
///
/// **Bounded memory, lossless eviction.** A key with no permit out, no waiter queued and no
/// handle from [`get`](Self::get) held is indistinguishable from a key never seen, so such
/// keys are forgotten whenever a shard fills up (and by
/// [`retain_in_use`](Self::retain_in_use)). A key with anything out is never forgotten: a new
/// key meeting a table (its shard: see [`max_keys`](KeyedBulkheadBuilder::max_keys)) full of
/// busy keys is refused with [`Rejected::KeysFull`] (its
/// `retry_after` is `None`: only a permit's release frees room).
///
/// ```
/// use tidewall::bulkhead::Bulkhead;
/// use tidewall::Rejected;
///
/// let bulkheads = Bulkhead::builder(1).reject_when_full().keyed().max_keys(1_000).build()?;
/// let held = bulkheads.try_acquire(&"tenant-a")?;
/// assert_eq!(bulkheads.try_acquire(&"tenant-a").unwrap_err(), Rejected::BulkheadFull);
/// assert!(bulkheads.try_acquire(&"tenant-b").is_ok(), "every key has its own slots");
/// drop(held);
/// assert!(bulkheads.try_acquire(&"tenant-a").is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct KeyedBulkhead<K, R = DefaultRuntime> {
    shared: Arc<Keyed<K, R>>,
}

struct Keyed<K, R> {
    /// What a new key's bulkhead is made with; `reconfigure` changes its sizes.
    settings: Mutex<BulkheadBuilder<R>>,
    name: Name,
    keys: KeyedMap<K, Bulkhead<R>>,
    /// Refusals of new keys (a full table).
    rejections: crate::telemetry::PolicyTelemetry,
    /// Refusals by the keys' bulkheads, one set of counters for all of them.
    per_key: std::sync::Arc<crate::telemetry::PolicyTelemetry>,
}

impl<R: Clock> Evict for Bulkhead<R> {
    fn eviction(&self, _now: u64) -> Eviction {
        // Permits, waiters and handles all hold a clone, made only under the shard lock
        // (where this runs): a count of one seen here stays one until the lock is released.
        if Arc::strong_count(&self.shared) == 1 {
            Eviction::Now
        } else {
            Eviction::Blocked
        }
    }
}

/// Configures a [`KeyedBulkhead`]: every setting of the [`BulkheadBuilder`] it came from,
/// plus the bound on keys.
#[must_use]
#[derive(Debug, Clone)]
pub struct KeyedBulkheadBuilder<R = DefaultRuntime> {
    bulkhead: BulkheadBuilder<R>,
    max_keys: usize,
}

impl<R> KeyedBulkheadBuilder<R> {
    pub(super) fn new(bulkhead: BulkheadBuilder<R>) -> Self {
        Self {
            bulkhead,
            max_keys: 10_000,
        }
    }

    /// The most keys held at once, a hard bound (default 10,000; any `usize` but zero: the
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

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// As [`BulkheadBuilder::build`], plus [`ConfigError::Zero`] for `max_keys == 0`.
    pub fn build<K: Hash + Eq + Clone>(self) -> Result<KeyedBulkhead<K, R>, ConfigError>
    where
        R: Clock,
    {
        self.bulkhead.validate()?;
        let keys = KeyedMap::new(self.max_keys)?;
        let rejections = crate::telemetry::PolicyTelemetry::new(
            "keyed_bulkhead",
            &self.bulkhead.name,
            &[KEYS_FULL],
        )
        .with_listener(self.bulkhead.events.clone());
        let per_key = self.bulkhead.telemetry();
        Ok(KeyedBulkhead {
            shared: Arc::new(Keyed {
                name: self.bulkhead.name.clone(),
                settings: Mutex::new(self.bulkhead),
                keys,
                rejections,
                per_key,
            }),
        })
    }
}

impl<K: Hash + Eq + Clone, R: Clock> KeyedBulkhead<K, R> {
    /// Takes a free slot of `key`'s bulkhead now, or rejects without queueing.
    ///
    /// # Errors
    ///
    /// [`Rejected::BulkheadFull`] when every slot of `key` is taken (or waiters are queued
    /// ahead); [`Rejected::KeysFull`] for a new key when its shard is full of busy keys.
    pub fn try_acquire(&self, key: &K) -> Result<OwnedPermit<R>, Rejected> {
        // Taken quietly under the table's lock; a refusal is reported after it is released,
        // so a listener may call back into the table.
        self.with_bulkhead(key, |bulkhead| {
            Ok(bulkhead
                .try_acquire_owned_quiet()
                .ok_or_else(|| bulkhead.clone()))
        })?
        .map_err(|full| full.refuse_full())
    }

    /// A free slot of `key`'s bulkhead now, or `None` when full, without counting that as a
    /// rejection (for a caller that then waits, which counts).
    #[cfg(feature = "http")]
    pub(crate) fn try_acquire_quiet(&self, key: &K) -> Result<Option<OwnedPermit<R>>, Rejected> {
        self.with_bulkhead(key, |bulkhead| Ok(bulkhead.try_acquire_owned_quiet()))
    }

    /// Waits for a slot of `key`'s bulkhead, in its queue's order, up to the configured
    /// `max_wait` and never past `deadline`.
    ///
    /// **Cancel safety:** as [`Bulkhead::acquire`]: dropping the future leaves the queue
    /// and leaks nothing. The key is held (never evicted) while the future exists.
    ///
    /// # Errors
    ///
    /// As [`Bulkhead::acquire_owned`], plus [`Rejected::KeysFull`] (at once) for a new key
    /// when its shard is full of busy keys.
    pub fn acquire_before(
        &self,
        key: &K,
        deadline: Deadline,
    ) -> impl Future<Output = Result<OwnedPermit<R>, Rejected>> + Send + 'static {
        let waiting = self.with_bulkhead(key, |bulkhead| Ok(bulkhead.acquire_owned(deadline)));
        async move { waiting?.await }
    }

    /// Runs `op` inside `key`'s bulkhead: waits for a slot (up to `max_wait`), runs, frees it.
    ///
    /// **Cancel safety:** dropping the future frees the slot or leaves the queue.
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] when no slot was free in time or the key table is full,
    /// [`Error::Inner`] with `op`'s error.
    pub async fn call<T, E, F, Fut>(&self, key: &K, op: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let _permit = self.acquire_before(key, Deadline::none()).await?;
        op().await.map_err(Error::Inner)
    }

    /// Runs `use_it` on `key`'s bulkhead (made if new) under the table's lock, so whatever it
    /// takes from the bulkhead is taken before any sweep can see the entry.
    fn with_bulkhead<O>(
        &self,
        key: &K,
        use_it: impl FnOnce(&Bulkhead<R>) -> Result<O, Rejected>,
    ) -> Result<O, Rejected> {
        let shared = &*self.shared;
        let found = shared.keys.entry(
            key,
            || 0,
            |slot, _| match slot {
                Slot::Found(bulkhead) => (use_it(bulkhead), None),
                Slot::Vacant => {
                    let bulkhead =
                        lock(&shared.settings).make_counted(std::sync::Arc::clone(&shared.per_key));
                    (use_it(&bulkhead), Some(bulkhead))
                }
            },
        );
        found.unwrap_or_else(|full| full.refuse(&shared.rejections))
    }

    /// A handle to `key`'s bulkhead, if the key is held. While a handle is held the key is
    /// never evicted.
    pub fn get(&self, key: &K) -> Option<Bulkhead<R>> {
        self.shared.keys.get(key, Bulkhead::clone)
    }

    /// Calls of `key` running now (zero for a key not held).
    pub fn in_flight(&self, key: &K) -> usize {
        self.shared.keys.get(key, Bulkhead::in_flight).unwrap_or(0)
    }

    /// Every key held with calls running, and how many: for a gauge per key (per host), or
    /// a health endpoint. Read one shard at a time: a key that changes meanwhile may be read
    /// before or after. A key not listed runs nothing.
    ///
    /// ```
    /// use tidewall::bulkhead::Bulkhead;
    ///
    /// let hosts = Bulkhead::builder(4).reject_when_full().keyed().build()?;
    /// let _a = hosts.try_acquire(&"a.example")?;
    /// let _b = (hosts.try_acquire(&"b.example")?, hosts.try_acquire(&"b.example")?);
    /// drop(hosts.try_acquire(&"c.example")?);
    /// let mut busy = hosts.busy();
    /// busy.sort();
    /// assert_eq!(busy, [("a.example", 1), ("b.example", 2)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn busy(&self) -> Vec<(K, usize)> {
        self.shared.keys.each_found(|key, bulkhead| {
            let running = bulkhead.in_flight();
            (running > 0).then(|| (key.clone(), running))
        })
    }

    /// Forgets every key with nothing out (lossless: see the type's docs); returns how many
    /// went. The table also does this by itself when a new key meets a full shard.
    pub fn retain_in_use(&self) -> usize {
        self.shared.keys.retain_evictable(|| 0)
    }

    keyed_table_accessors!("not counting each key's bulkhead");

    /// The name every key's bulkhead carries (for events and metrics).
    ///
    /// ```
    /// use tidewall::bulkhead::Bulkhead;
    ///
    /// let per_tenant = Bulkhead::builder(4).name("tenants").keyed().build::<u32>()?;
    /// assert_eq!(per_tenant.name(), "tenants");
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Applies the sizes of `settings` (`max_concurrent`, `max_queue`, `max_wait`) and its
    /// queue discipline to every key's bulkhead in place, and to keys made from now on,
    /// validated as
    /// [`build`](BulkheadBuilder::build) validates them; on an error nothing changes. Its
    /// name, `max_keys` and runtime are not changed (the table's bound is fixed at build).
    ///
    /// Each key's bulkhead changes as [`Bulkhead::reconfigure`] says: permits held stay
    /// held, and a key shrunk below what it holds admits nobody new until enough come back.
    ///
    /// ```
    /// use tidewall::bulkhead::Bulkhead;
    ///
    /// let per_tenant = Bulkhead::builder(1).reject_when_full().keyed().build()?;
    /// let held = per_tenant.try_acquire(&"a")?;
    /// per_tenant.reconfigure(Bulkhead::builder(2).reject_when_full())?;
    /// let second = per_tenant.try_acquire(&"a")?;
    /// assert_eq!(per_tenant.in_flight(&"a"), 2);
    /// per_tenant.try_acquire(&"b")?; // a new key gets the new size too
    /// # drop((held, second));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`BulkheadBuilder::build`].
    pub fn reconfigure<R2>(&self, settings: BulkheadBuilder<R2>) -> Result<(), ConfigError> {
        settings.validate()?;
        let shared = &*self.shared;
        {
            // Published before the keys are visited: a key made after its shard was visited
            // is made with the new sizes.
            let mut made_with = lock(&shared.settings);
            made_with.max_concurrent = settings.max_concurrent;
            made_with.max_queue = settings.max_queue;
            made_with.max_wait = settings.max_wait;
            made_with.discipline = settings.discipline;
        }
        for bulkhead in shared.keys.each(Bulkhead::clone) {
            bulkhead.retune(&settings);
        }
        Ok(())
    }
}

impl<K, R> Clone for KeyedBulkhead<K, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, R> fmt::Debug for KeyedBulkhead<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One lock at a time: a new key takes its shard's lock, then the settings'.
        let capacity = lock(&self.shared.settings).max_concurrent;
        f.debug_struct("KeyedBulkhead")
            .field("name", &self.shared.name)
            .field("capacity", &capacity)
            .field("keys", &self.shared.keys.len())
            .field("max_keys", &self.shared.keys.max_keys())
            .finish_non_exhaustive()
    }
}
