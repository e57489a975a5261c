//! An adaptive limiter per key, in bounded memory.

use std::fmt;
use std::future::Future;
use std::hash::Hash;

use tidewall_core::adaptive::LimitAlgorithm;

use super::{AdaptiveLimiter, AdaptiveLimiterBuilder, AdaptivePermit};
use crate::admission::{Admission, Priority, Wait};
use crate::keyed_map::{Evict, Eviction, KeyedMap, Slot};
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::{Arc, Mutex, lock};
use crate::{ConfigError, Deadline, Name, Rejected};

/// The refusal a keyed table gives a new key, as its telemetry registers it.
const KEYS_FULL: Rejected = Rejected::KeysFull { retry_after: None };

/// An [`AdaptiveLimiter`] per key (per host, per tenant), each with the same settings and its
/// own limit, learned from its own calls, holding at most `max_keys` keys.
///
/// Build it from a limiter's builder with [`keyed`](AdaptiveLimiterBuilder::keyed). A key's
/// limiter is made on its first call, with its own copy of the algorithm as the builder was
/// given it, and behaves exactly as an [`AdaptiveLimiter`]: its calls teach its algorithm
/// alone, so a slow host lowers its own limit and no other. A key's handle
/// ([`get`](Self::get)) is an [`Admission`] stage for that key's calls: a
/// [pipeline](crate::pipeline)'s, or [`AdmitLayer`](crate::tower::AdmitLayer)'s.
///
/// **Bounded memory, lossless eviction.** A key with no permit out, no waiter queued and no
/// handle from [`get`](Self::get) held (nor a pipeline or a layer built over one) may be
/// forgotten whenever a shard fills up (and by [`retain_in_use`](Self::retain_in_use)); its
/// learned limit is forgotten with it, so a key seen again starts from the algorithm's
/// initial limit. A key with anything out is never forgotten: a new key meeting a table (its
/// shard: see [`max_keys`](KeyedAdaptiveLimiterBuilder::max_keys)) full of busy keys is
/// refused with [`Rejected::KeysFull`] (its `retry_after` is `None`: only a permit's release
/// frees room).
///
/// Its keys' refusals and waits are reported as an [`AdaptiveLimiter`]'s of its name
/// (`adaptive`); a full table's refusals as `keyed_adaptive`, the label of the table's gauges.
///
/// ```
/// use tidewall::adaptive::{AdaptiveLimiter, Aimd};
/// use tidewall::Rejected;
///
/// let aimd = Aimd::builder().min_limit(1).initial_limit(2).backoff_ratio(0.5).build()?;
/// let hosts = AdaptiveLimiter::builder(aimd).keyed().max_keys(1_000).build()?;
/// let held = [hosts.try_acquire(&"a.example")?, hosts.try_acquire(&"a.example")?];
/// assert_eq!(hosts.try_acquire(&"a.example").unwrap_err(), Rejected::BulkheadFull);
/// assert!(hosts.try_acquire(&"b.example").is_ok(), "every key has its own limit");
/// let [first, second] = held;
/// first.failure(); // a.example dropped a call: its limit halves, b.example's does not
/// assert_eq!((hosts.limit(&"a.example"), hosts.limit(&"b.example")), (Some(1), Some(2)));
/// # drop(second);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct KeyedAdaptiveLimiter<K, A, R = DefaultRuntime> {
    shared: Arc<Keyed<K, A, R>>,
}

struct Keyed<K, A, R> {
    /// What a new key's limiter is made with (its algorithm as first given, or as the last
    /// reconfiguration gave it).
    settings: Mutex<AdaptiveLimiterBuilder<A, R>>,
    name: Name,
    keys: KeyedMap<K, AdaptiveLimiter<A, R>>,
    /// Refusals of new keys (a full table).
    rejections: crate::telemetry::PolicyTelemetry,
    /// Refusals and waits of the keys' limiters, one set of counters for all of them.
    per_key: std::sync::Arc<crate::telemetry::PolicyTelemetry>,
}

impl<A, R> Evict for AdaptiveLimiter<A, R> {
    fn eviction(&self, _now: u64) -> Eviction {
        // Permits, waiters and handles all hold a clone of its shared state, made only under
        // the shard lock (where this runs) or from another clone: a count of one seen here
        // stays one until the lock is released.
        if self.handles() == 1 {
            Eviction::Now
        } else {
            Eviction::Blocked
        }
    }
}

impl<A, R> AdaptiveLimiterBuilder<A, R> {
    /// Builds a limiter per key instead, each with these settings and its own copy of the
    /// algorithm: see [`KeyedAdaptiveLimiter`].
    pub fn keyed(self) -> KeyedAdaptiveLimiterBuilder<A, R> {
        KeyedAdaptiveLimiterBuilder {
            limiter: self,
            max_keys: 10_000,
        }
    }
}

/// Configures a [`KeyedAdaptiveLimiter`]: every setting of the [`AdaptiveLimiterBuilder`] it
/// came from, plus the bound on keys.
#[must_use]
#[derive(Clone)]
pub struct KeyedAdaptiveLimiterBuilder<A, R = DefaultRuntime> {
    limiter: AdaptiveLimiterBuilder<A, R>,
    max_keys: usize,
}

impl<A, R> KeyedAdaptiveLimiterBuilder<A, R> {
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
    /// As [`AdaptiveLimiterBuilder::build`], plus [`ConfigError::Zero`] for
    /// `max_keys == 0`.
    pub fn build<K: Hash + Eq + Clone>(self) -> Result<KeyedAdaptiveLimiter<K, A, R>, ConfigError>
    where
        A: LimitAlgorithm + Clone,
        R: Clock,
    {
        // Every key's limiter is built from a copy of these settings: checked once here.
        self.limiter.clone().build()?;
        let keys = KeyedMap::new(self.max_keys)?;
        let (name, events) = self.limiter.reports_as();
        let name = name.clone();
        let rejections =
            crate::telemetry::PolicyTelemetry::new("keyed_adaptive", &name, &[KEYS_FULL])
                .with_listener(events);
        let per_key = self.limiter.telemetry();
        Ok(KeyedAdaptiveLimiter {
            shared: Arc::new(Keyed {
                settings: Mutex::new(self.limiter),
                name,
                keys,
                rejections,
                per_key,
            }),
        })
    }
}

impl<A, R> fmt::Debug for KeyedAdaptiveLimiterBuilder<A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedAdaptiveLimiterBuilder")
            .field("name", self.limiter.reports_as().0)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, A: LimitAlgorithm + Clone, R: Clock> KeyedAdaptiveLimiter<K, A, R> {
    /// Admits a call of `key` now as [`AdaptiveLimiter::try_acquire`] does (fewer than its
    /// share of `key`'s limit in flight, and nobody as important or more queued for `key`:
    /// queued callers of lower priority, or waiting for their own share, are passed); record
    /// how it ended on the permit, which teaches `key`'s algorithm alone.
    ///
    /// # Errors
    ///
    /// [`Rejected::BulkheadFull`] when `key`'s limit is reached; [`Rejected::KeysFull`] for a
    /// new key when its shard is full of busy keys.
    pub fn try_acquire(&self, key: &K) -> Result<AdaptivePermit<A, R>, Rejected> {
        // Taken quietly under the table's lock; a refusal is reported after it is released,
        // so a listener may call back into the table.
        self.with_limiter(key, |limiter| {
            Ok(limiter.take().ok_or_else(|| limiter.clone()))
        })?
        .map_err(|full| full.refused())
    }

    /// Waits for a slot of `key`'s limiter, in its queue's order, up to the configured
    /// `max_wait` and never past `deadline` (at once, without a queue: the default).
    ///
    /// **Cancel safety:** as the limiter's [`Admission::admit`]: dropping the future leaves
    /// the queue and leaks nothing. The key is held (never evicted) while the future exists.
    ///
    /// # Errors
    ///
    /// [`Rejected::BulkheadFull`] when the queue is full or the wait exceeds `max_wait`,
    /// [`Rejected::DeadlineExceeded`] when it would end past `deadline`, and
    /// [`Rejected::KeysFull`] (at once) for a new key when its shard is full of busy keys.
    pub fn acquire_before(
        &self,
        key: &K,
        deadline: Deadline,
    ) -> impl Future<Output = Result<AdaptivePermit<A, R>, Rejected>> + Send + 'static
    where
        A: Send + 'static,
    {
        self.acquire_before_as(key, deadline, Priority::Default)
    }

    /// As [`acquire_before`](Self::acquire_before), for a call of `priority`.
    pub(crate) fn acquire_before_as(
        &self,
        key: &K,
        deadline: Deadline,
        priority: Priority,
    ) -> impl Future<Output = Result<AdaptivePermit<A, R>, Rejected>> + Send + 'static
    where
        A: Send + 'static,
    {
        let waiting = self.with_limiter(key, |limiter| {
            Ok(as_priority(limiter, priority).admit(Wait::Until(deadline)))
        });
        async move { waiting?.await }
    }

    /// A handle to `key`'s limiter, made if new: an [`Admission`] stage for a
    /// [pipeline](crate::pipeline) or [`AdmitLayer`](crate::tower::AdmitLayer) serving that
    /// key, told how each call ended; with [`with_priority`](AdaptiveLimiter::with_priority),
    /// one per class of calls. While a handle (or anything built over one) is held, the key
    /// is never evicted: hold it for a call, a request or a connection, not for ever.
    ///
    /// ```
    /// use tidewall::adaptive::{AdaptiveLimiter, Aimd, Priority};
    /// use tidewall::pipeline::Pipeline;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let aimd = Aimd::builder().min_limit(1).initial_limit(4).backoff_ratio(0.5).build()?;
    /// let tenants = AdaptiveLimiter::builder(aimd).keyed().build::<u32>()?;
    /// let prefetch = tenants.get(&7)?.with_priority(Priority::Sheddable);
    /// let pipeline = Pipeline::builder().bulkhead(prefetch).build()?;
    /// let result = pipeline.call(|| async { Err::<(), _>("overloaded") }).await;
    /// assert!(result.is_err());
    /// assert_eq!(tenants.limit(&7), Some(2), "tenant 7 learned from its own failure");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Rejected::KeysFull`] for a new key when its shard is full of busy keys.
    pub fn get(&self, key: &K) -> Result<AdaptiveLimiter<A, R>, Rejected> {
        self.with_limiter(key, |limiter| Ok(limiter.clone()))
    }

    /// Runs `use_it` on `key`'s limiter (made if new) under the table's lock, so whatever it
    /// takes from the limiter is taken before any sweep can see the entry.
    fn with_limiter<O>(
        &self,
        key: &K,
        use_it: impl FnOnce(&AdaptiveLimiter<A, R>) -> Result<O, Rejected>,
    ) -> Result<O, Rejected> {
        let shared = &*self.shared;
        let found = shared.keys.entry(
            key,
            || 0,
            |slot, _| match slot {
                Slot::Found(limiter) => (use_it(limiter), None),
                Slot::Vacant => {
                    let settings = lock(&shared.settings).clone();
                    match settings.build_counted(Some(std::sync::Arc::clone(&shared.per_key))) {
                        Ok(limiter) => (use_it(&limiter), Some(limiter)),
                        // These settings built once; only an algorithm whose copies differ
                        // (a `Clone` giving a limit of zero) fails now: a key with no slot.
                        Err(_) => (Err(Rejected::BulkheadFull), None),
                    }
                }
            },
        );
        found.unwrap_or_else(|full| full.refuse(&shared.rejections))
    }

    /// The limit in force for `key`, if the key is held.
    pub fn limit(&self, key: &K) -> Option<u32> {
        self.shared.keys.get(key, AdaptiveLimiter::limit)
    }

    /// Calls of `key` in flight now (zero for a key not held).
    pub fn in_flight(&self, key: &K) -> usize {
        self.shared
            .keys
            .get(key, AdaptiveLimiter::in_flight)
            .unwrap_or(0)
    }

    /// Every key held, with the limit its limiter has learnt: for a gauge per key (per
    /// host). Read one shard at a time: a key that changes meanwhile may be read before or
    /// after. A key not listed would start from the initial limit.
    ///
    /// ```
    /// use tidewall::adaptive::{AdaptiveLimiter, Aimd};
    ///
    /// let aimd = Aimd::builder().min_limit(1).initial_limit(8).build()?;
    /// let hosts = AdaptiveLimiter::builder(aimd).keyed().build()?;
    /// drop(hosts.try_acquire(&"a.example")?);
    /// assert_eq!(hosts.limits(), [("a.example", 8)]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn limits(&self) -> Vec<(K, u32)> {
        self.shared
            .keys
            .each_found(|key, limiter| Some((key.clone(), limiter.limit())))
    }

    /// Every key held with calls in flight, and how many (read as [`limits`](Self::limits)).
    /// A key not listed runs nothing.
    pub fn busy(&self) -> Vec<(K, usize)> {
        self.shared.keys.each_found(|key, limiter| {
            let running = limiter.in_flight();
            (running > 0).then(|| (key.clone(), running))
        })
    }

    /// Applies `settings` to every key held and to every key made after, as each key's
    /// [`AdaptiveLimiter::reconfigure`] says: the algorithm replaces each key's, so every
    /// key starts learning again from the new initial limit, and the queue, wait, discipline
    /// and shares take effect at once; permits and waiters are kept. Its name, listener and
    /// runtime are not read, and the bound on keys stays.
    ///
    /// ```
    /// use tidewall::adaptive::{AdaptiveLimiter, Aimd};
    ///
    /// let aimd = |limit| Aimd::builder().min_limit(1).initial_limit(limit).build();
    /// let hosts = AdaptiveLimiter::builder(aimd(2)?).keyed().build::<&str>()?;
    /// let held = hosts.try_acquire(&"a.example")?;
    /// hosts.reconfigure(AdaptiveLimiter::builder(aimd(5)?))?;
    /// assert_eq!(hosts.limit(&"a.example"), Some(5));
    /// assert_eq!(hosts.in_flight(&"a.example"), 1, "nothing revoked");
    /// # drop(held);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`AdaptiveLimiterBuilder::build`]; nothing changes then.
    pub fn reconfigure<R2>(
        &self,
        settings: AdaptiveLimiterBuilder<A, R2>,
    ) -> Result<(), ConfigError> {
        let (algorithm, settings) = settings.split();
        self.retune(&settings, Some(algorithm))
    }

    /// Applies `settings`' queue, wait, discipline and shares to every key, and `algorithm`
    /// if given (else each key keeps its own, with what it learned).
    pub(crate) fn retune<R2>(
        &self,
        settings: &AdaptiveLimiterBuilder<(), R2>,
        algorithm: Option<A>,
    ) -> Result<(), ConfigError> {
        // Each key's limit is at least 1 (an algorithm's least): checked at the new one's.
        settings
            .check(algorithm.as_ref().map_or(1, A::limit))
            .map(drop)?;
        let shared = &*self.shared;
        // Published before the keys are visited: a key made after its shard was visited is
        // made with the new settings.
        lock(&shared.settings).retune_from(settings, algorithm.clone());
        for limiter in shared.keys.each(AdaptiveLimiter::clone) {
            let retuned = limiter.retune(settings, algorithm.clone());
            debug_assert!(
                retuned.is_ok(),
                "checked settings were refused: {retuned:?}"
            );
        }
        Ok(())
    }

    /// The algorithm every new key starts from (for a reload: the same one keeps what each
    /// key learned).
    #[cfg(any(feature = "serde", feature = "http"))]
    pub(crate) fn algorithm_given(&self) -> A {
        lock(&self.shared.settings).algorithm().clone()
    }

    /// Forgets every key with nothing out (lossless but for what it learned: see the type's
    /// docs); returns how many went. The table also does this by itself when a new key meets
    /// a full shard.
    pub fn retain_in_use(&self) -> usize {
        self.shared.keys.retain_evictable(|| 0)
    }
}

impl<K, A, R> KeyedAdaptiveLimiter<K, A, R>
where
    K: Hash + Eq + Clone,
    A: LimitAlgorithm + Clone + Send + 'static,
    R: Clock,
{
    /// As [`try_acquire`](Self::try_acquire), but a full limit is `Ok(None)` and not counted
    /// as a refusal: the caller goes on to [`acquire_before`](Self::acquire_before), which
    /// counts one if it refuses.
    #[cfg(feature = "http")]
    pub(crate) fn try_acquire_quiet_as(
        &self,
        key: &K,
        priority: Priority,
    ) -> Result<Option<AdaptivePermit<A, R>>, Rejected> {
        self.with_limiter(
            key,
            |limiter| Ok(as_priority(limiter, priority).try_admit()),
        )
    }
}

impl<K, A, R> KeyedAdaptiveLimiter<K, A, R> {
    keyed_table_accessors!("not counting each key's limiter");

    /// The name every key's limiter carries (for events and metrics).
    ///
    /// ```
    /// use tidewall::adaptive::{AdaptiveLimiter, Vegas};
    ///
    /// let hosts = AdaptiveLimiter::builder(Vegas::builder().build()?)
    ///     .name("hosts")
    ///     .keyed()
    ///     .build::<String>()?;
    /// assert_eq!(hosts.name(), "hosts");
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.shared.name
    }
}

impl<K, A, R> Clone for KeyedAdaptiveLimiter<K, A, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, A: LimitAlgorithm, R> fmt::Debug for KeyedAdaptiveLimiter<K, A, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One lock at a time: a new key takes its shard's lock, then the settings'.
        let initial_limit = lock(&self.shared.settings).algorithm().limit();
        f.debug_struct("KeyedAdaptiveLimiter")
            .field("name", &self.shared.name)
            .field("initial_limit", &initial_limit)
            .field("keys", &self.shared.keys.len())
            .field("max_keys", &self.shared.keys.max_keys())
            .finish_non_exhaustive()
    }
}

/// `limiter`, or a handle to it for calls of `priority` (a table's limiters admit at the
/// default priority).
fn as_priority<A, R: Clock>(
    limiter: &AdaptiveLimiter<A, R>,
    priority: Priority,
) -> std::borrow::Cow<'_, AdaptiveLimiter<A, R>>
where
    A: LimitAlgorithm,
{
    if limiter.priority() == priority {
        std::borrow::Cow::Borrowed(limiter)
    } else {
        std::borrow::Cow::Owned(limiter.with_priority(priority))
    }
}
