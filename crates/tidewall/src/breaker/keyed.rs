//! A circuit breaker per key, in bounded memory.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use tidewall_core::breaker::BreakerPolicy;

use super::events::{Listener, StateChange};
use super::shared::{Setup, Shared};
use super::{CircuitBreaker, CircuitBreakerBuilder, Counts, OwnedPermit, State};
use crate::keyed_map::{Evict, Eviction, KeyedMap, Slot};
use crate::rate::clock::LimiterClock;
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::{Arc, AtomicU64, Mutex, Ordering::Relaxed, lock};
use crate::{ConfigError, Error, Name, Rejected};

/// The refusal a keyed table gives a new key, as its telemetry registers it.
const KEYS_FULL: Rejected = Rejected::KeysFull { retry_after: None };

/// A [`CircuitBreaker`] per key (per host, per tenant, per shard), each with the same
/// settings and its own state, holding at most `max_keys` keys.
///
/// Build it from a breaker's builder with [`keyed`](CircuitBreakerBuilder::keyed). A key's
/// breaker is made on its first call and behaves exactly as a [`CircuitBreaker`]: one key
/// failing opens only its own breaker.
///
/// **Bounded memory, never forgetting an open breaker.** A key is forgotten (and a later call
/// starts it afresh) only when nothing depends on it: its breaker is closed, no permit or
/// handle from [`get`](Self::get) or [`get_or_make`](Self::get_or_make) (nor a clone of one)
/// is out, and either its window is empty or it has not been
/// used for [`idle_ttl`](KeyedCircuitBreakerBuilder::idle_ttl) (used: a call asked for, or a
/// call of its ended in failure, however long ago it began). So an eviction forgets at most
/// the failures of a window no call has touched for `idle_ttl`. An open, half-open or forced
/// breaker is kept whatever the pressure: a new key meeting a table (its shard: see
/// [`max_keys`](KeyedCircuitBreakerBuilder::max_keys)) full of keys it may not forget is
/// refused with [`Rejected::KeysFull`], whose `retry_after` says when the first of
/// them goes idle (`None` when all are open, forced, or held by permits or handles).
///
/// ```
/// use tidewall::breaker::{CircuitBreaker, State};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tidewall::ConfigError> {
/// let breakers = CircuitBreaker::builder().consecutive_failures(2).keyed().max_keys(1_000).build()?;
/// for _ in 0..2 {
///     let _ = breakers.call(&"down.example", || async { Err::<(), _>("refused") }).await;
/// }
/// assert_eq!(breakers.state(&"down.example"), Some(State::Open));
/// // Another key has its own breaker.
/// assert!(breakers.call(&"up.example", || async { Ok::<_, &str>(()) }).await.is_ok());
/// assert_eq!(breakers.state(&"up.example"), Some(State::Closed));
/// # Ok(()) }
/// ```
pub struct KeyedCircuitBreaker<K, R = DefaultRuntime> {
    shared: Arc<Keyed<K, R>>,
}

struct Keyed<K, R> {
    /// What a new key's breaker is made with (one copy of the policy for every key), and its
    /// cap on a server's hint; `reconfigure` replaces both.
    made_with: Mutex<(std::sync::Arc<BreakerPolicy>, Duration)>,
    rt: R,
    name: Name,
    listener: Option<Listener>,
    key_listener: Option<KeyListener<K>>,
    key_label: Option<KeyLabel<K>>,
    /// Each key's breaker draws its break jitter from the next seed.
    next_seed: AtomicU64,
    idle_ttl: u64,
    /// Reads when keys were last used: the CPU's counter when the clock is real time, as the
    /// rate limiter does, since every call reads it.
    clock: LimiterClock,
    keys: KeyedMap<K, Entry<R>>,
    /// Refusals of new keys (a full table).
    rejections: crate::telemetry::PolicyTelemetry,
    /// Refusals by the keys' breakers, one set of counters for all of them.
    per_key: std::sync::Arc<crate::telemetry::PolicyTelemetry>,
}

type KeyListener<K> = std::sync::Arc<dyn Fn(&K, &StateChange<'_>) + Send + Sync>;
type KeyLabel<K> = std::sync::Arc<dyn Fn(&K) -> String + Send + Sync>;

struct Entry<R> {
    breaker: CircuitBreaker<R>,
    /// When a call last asked for this key, on the keyed breaker's clock.
    last_used: u64,
    idle_ttl: u64,
}

impl<R: Clock> Evict for Entry<R> {
    fn eviction(&self, now: u64) -> Eviction {
        // Permits and handles are cloned only under the shard lock, where this runs: a count
        // of one seen here stays one until the lock is released.
        if Arc::strong_count(&self.breaker.shared) > 1 || self.breaker.state() != State::Closed {
            return Eviction::Blocked;
        }
        if self.breaker.shared.is_pristine() {
            return Eviction::Now;
        }
        // Idle from the later of its last call's start and its last failure: a call longer
        // than `idle_ttl` that just failed is a use now.
        let failed_at = self.breaker.shared.since_last_failure().map_or(0, |ago| {
            now.saturating_sub(u64::try_from(ago.as_nanos()).unwrap_or(u64::MAX))
        });
        let idle_from = self.last_used.max(failed_at).saturating_add(self.idle_ttl);
        if now >= idle_from {
            Eviction::Now
        } else {
            Eviction::At(idle_from)
        }
    }
}

/// Configures a [`KeyedCircuitBreaker`]: every setting of the [`CircuitBreakerBuilder`] it came
/// from, plus the bound on keys and how they are named.
#[must_use]
pub struct KeyedCircuitBreakerBuilder<K, R = DefaultRuntime> {
    breaker: CircuitBreakerBuilder<R>,
    max_keys: usize,
    idle_ttl: Duration,
    key_listener: Option<KeyListener<K>>,
    key_label: Option<KeyLabel<K>>,
}

impl<K, R> KeyedCircuitBreakerBuilder<K, R> {
    pub(super) fn new(breaker: CircuitBreakerBuilder<R>) -> Self {
        Self {
            breaker,
            max_keys: 10_000,
            idle_ttl: Duration::from_secs(60),
            key_listener: None,
            key_label: None,
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

    /// How long a closed breaker with failures in its window is kept after its last use (a
    /// call asked for, or one ending in failure; default 60 s). A closed breaker with an
    /// empty window may go at once: forgetting it loses nothing.
    ///
    /// Last use is read on the table's runtime's clock, or on the CPU's counter when that
    /// clock is real time as the table is built (as a [rate limiter](crate::rate) chooses):
    /// in a test, build the table after pausing tokio's time, or idle time passes in real time
    /// while its breakers run in virtual time.
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = ttl;
        self
    }

    /// Called on every state change of any key's breaker, with the key, on the thread that
    /// caused it (keep it short). A listener set on the breaker's builder is called too.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tidewall::breaker::{CircuitBreaker, State};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let opened = Arc::new(Mutex::new(Vec::new()));
    /// let seen = Arc::clone(&opened);
    /// let breakers = CircuitBreaker::builder()
    ///     .consecutive_failures(1)
    ///     .keyed()
    ///     .on_state_change(move |host: &String, change| {
    ///         if change.to == State::Open {
    ///             seen.lock().unwrap().push(host.clone());
    ///         }
    ///     })
    ///     .build()?;
    /// let _ = breakers.call(&"a.example".to_string(), || async { Err::<(), _>("down") }).await;
    /// assert_eq!(*opened.lock().unwrap(), ["a.example"]);
    /// # Ok(()) }
    /// ```
    pub fn on_state_change(
        mut self,
        listener: impl Fn(&K, &StateChange<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.key_listener = Some(std::sync::Arc::new(listener));
        self
    }

    /// Labels each key's `tracing` events and `metrics` series with `label(key)`, made once
    /// when the key's breaker is made. Off by default: every key becomes a metrics series,
    /// so choose a label of bounded cardinality (a host, not a URL). `label` is called under
    /// the table's lock for the key's shard (keep it a pure function of the key: calling this
    /// table from it deadlocks), for a new key before the table knows whether it has room.
    pub fn key_label(mut self, label: impl Fn(&K) -> String + Send + Sync + 'static) -> Self {
        self.key_label = Some(std::sync::Arc::new(label));
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// As [`CircuitBreakerBuilder::build`], plus [`ConfigError::Zero`] for `max_keys == 0`
    /// and [`ConfigError::DurationOverflow`] for an `idle_ttl` above `u64::MAX` nanoseconds.
    pub fn build(self) -> Result<KeyedCircuitBreaker<K, R>, ConfigError>
    where
        K: Hash + Eq + Clone,
        R: Clock,
    {
        let (policy, setup) = self.breaker.validate()?;
        let idle_ttl = u64::try_from(self.idle_ttl.as_nanos())
            .map_err(|_| ConfigError::DurationOverflow { field: "idle_ttl" })?;
        let keys = KeyedMap::new(self.max_keys)?;
        Ok(KeyedCircuitBreaker {
            shared: Arc::new(Keyed {
                made_with: Mutex::new((std::sync::Arc::new(policy), setup.max_open_hint)),
                clock: LimiterClock::new(&setup.rt),
                rt: setup.rt,
                name: setup.name.clone(),
                listener: setup.listener,
                key_listener: self.key_listener,
                key_label: self.key_label,
                next_seed: AtomicU64::new(setup.seed),
                idle_ttl,
                keys,
                rejections: crate::telemetry::PolicyTelemetry::new(
                    "keyed_breaker",
                    &setup.name,
                    &[KEYS_FULL],
                )
                .with_listener(setup.telemetry.listener()),
                per_key: setup.telemetry,
            }),
        })
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static, R: Clock> KeyedCircuitBreaker<K, R> {
    /// Asks to make one call for `key`: a permit to record its outcome on, or the rejection.
    ///
    /// # Errors
    ///
    /// [`Rejected::CircuitOpen`] while `key`'s breaker refuses (see
    /// [`CircuitBreaker::try_acquire`]); [`Rejected::KeysFull`] for a new key when the table
    /// (the new key's shard) is full of keys it may not forget.
    pub fn try_acquire(&self, key: &K) -> Result<OwnedPermit<R>, Rejected> {
        // A handle taken under the table's lock (which keeps the key), the call asked for
        // after it is released: a transition or a refusal tells listeners, which may call
        // back into the table.
        self.get_or_make(key)?.into_owned_permit()
    }

    /// Calls `op` if `key`'s breaker admits it; `Ok` counts as a success and `Err` as a
    /// failure.
    ///
    /// **Cancel safety:** as [`CircuitBreaker::call`].
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] when refused (as [`try_acquire`](Self::try_acquire)),
    /// [`Error::Inner`] with `op`'s error.
    pub async fn call<T, E, F, Fut>(&self, key: &K, op: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_classified(key, op, crate::classify::DefaultClassifier)
            .await
    }

    /// Like [`call`](Self::call), with a [classifier](crate::classify) deciding how the
    /// result counts, and its hint how long a trip keeps the breaker open (see
    /// [`CircuitBreaker::call_classified`]).
    ///
    /// **Cancel safety:** as [`CircuitBreaker::call`].
    ///
    /// # Errors
    ///
    /// As [`call`](Self::call).
    pub async fn call_classified<T, E, F, Fut, C>(
        &self,
        key: &K,
        op: F,
        classify: C,
    ) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        C: crate::classify::Classify<T, E>,
    {
        let permit = self.try_acquire(key)?;
        let result = op().await;
        let (verdict, hint) = crate::classify::judge(&classify, result.as_ref());
        permit.record_hinted(verdict.breaker_outcome(), hint);
        result.map_err(Error::Inner)
    }

    /// Runs `use_it` on `key`'s breaker (made if new) under the table's lock, so whatever it
    /// takes from the breaker is taken before any sweep can see the entry. Nothing that may
    /// tell a listener runs here.
    fn with_breaker<O>(
        &self,
        key: &K,
        use_it: impl FnOnce(&CircuitBreaker<R>) -> Result<O, Rejected>,
    ) -> Result<O, Rejected> {
        let shared = &*self.shared;
        let found = shared.keys.entry(
            key,
            || shared.clock.nanos(&shared.rt),
            |slot, now| match slot {
                Slot::Found(entry) => {
                    entry.last_used = now;
                    (use_it(&entry.breaker), None)
                }
                Slot::Vacant => {
                    let breaker = self.make(key);
                    (
                        use_it(&breaker),
                        Some(Entry {
                            breaker,
                            last_used: now,
                            idle_ttl: shared.idle_ttl,
                        }),
                    )
                }
            },
        );
        found.unwrap_or_else(|full| full.refuse(&shared.rejections))
    }

    fn make(&self, key: &K) -> CircuitBreaker<R> {
        let shared = &*self.shared;
        let listener = match (&shared.listener, &shared.key_listener) {
            (listener, None) => listener.clone(),
            (base, Some(keyed)) => {
                let (base, keyed, key) = (base.clone(), keyed.clone(), key.clone());
                // Both hear the change even if the first panics; its panic then goes on.
                let both: Listener = std::sync::Arc::new(move |change: &StateChange<'_>| {
                    let mut listeners = crate::telemetry::ListenerPanics::default();
                    if let Some(base) = &base {
                        listeners.run(|| base(change));
                    }
                    listeners.run(|| keyed(&key, change));
                    listeners.resume(|| ());
                });
                Some(both)
            }
        };
        // Golden-ratio steps: neighbouring keys' jitter streams start far apart.
        let seed = shared.next_seed.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed);
        let (policy, max_open_hint) = lock(&shared.made_with).clone();
        let setup = Setup {
            rt: shared.rt.clone(),
            name: shared.name.clone(),
            listener,
            seed,
            max_open_hint,
            key_label: shared.key_label.as_ref().map(|label| label(key).into()),
            telemetry: std::sync::Arc::clone(&shared.per_key),
        };
        CircuitBreaker {
            shared: Arc::new(Shared::new(policy, setup)),
        }
    }

    /// A handle to `key`'s breaker, if the key is held: to read it, force it open or closed,
    /// or reset it. While a handle is held the key is never evicted.
    pub fn get(&self, key: &K) -> Option<CircuitBreaker<R>> {
        self.shared.keys.get(key, |entry| entry.breaker.clone())
    }

    /// A handle to `key`'s breaker, made (closed) if the key is not held yet: to force a key
    /// open before its first call (an operator taking a host out of rotation). While the
    /// handle is held, or the breaker is not closed, the key is never evicted, so a key
    /// forced open stays open until it is forced closed or reset.
    ///
    /// ```
    /// use tidewall::breaker::{CircuitBreaker, State};
    /// use tidewall::Rejected;
    ///
    /// let hosts = CircuitBreaker::builder().keyed().max_keys(100).build()?;
    /// hosts.get_or_make(&"payments").unwrap().force_open();
    /// assert_eq!(hosts.state(&"payments"), Some(State::ForcedOpen));
    /// assert!(matches!(hosts.try_acquire(&"payments"), Err(Rejected::CircuitOpen { .. })));
    /// hosts.get_or_make(&"payments").unwrap().reset();
    /// assert!(hosts.try_acquire(&"payments").is_ok());
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Rejected::KeysFull`] for a new key when the table (the new key's shard) is full of
    /// keys it may not forget.
    pub fn get_or_make(&self, key: &K) -> Result<CircuitBreaker<R>, Rejected> {
        self.with_breaker(key, |breaker| Ok(breaker.clone()))
    }

    /// `key`'s state, if the key is held (a key not held would start closed).
    pub fn state(&self, key: &K) -> Option<State> {
        self.shared.keys.get(key, |entry| entry.breaker.state())
    }

    /// Every key held whose breaker is not closed, with its state (read one shard at a time:
    /// a key that changes meanwhile may be read before or after): for a health endpoint,
    /// or a dashboard of the hosts that are failing. A key not held is closed.
    ///
    /// ```
    /// use tidewall::breaker::{CircuitBreaker, State};
    ///
    /// let hosts = CircuitBreaker::builder().consecutive_failures(1).keyed().build()?;
    /// hosts.try_acquire(&"search").unwrap().success();
    /// hosts.try_acquire(&"payments").unwrap().failure();
    /// assert_eq!(hosts.not_closed(), vec![("payments", State::Open)]);
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn not_closed(&self) -> Vec<(K, State)> {
        self.shared.keys.each_found(|key, entry| {
            let state = entry.breaker.state();
            (state != State::Closed).then(|| (key.clone(), state))
        })
    }

    /// What `key`'s window holds now, if the key is held.
    pub fn counts(&self, key: &K) -> Option<Counts> {
        self.shared.keys.get(key, |entry| entry.breaker.counts())
    }

    /// Forgets every key that may go now (see the type's docs); returns how many went. The
    /// table also does this by itself when a new key meets a full shard.
    pub fn retain_in_use(&self) -> usize {
        let shared = &*self.shared;
        shared
            .keys
            .retain_evictable(|| shared.clock.nanos(&shared.rt))
    }

    keyed_table_accessors!("not counting each key's breaker");

    /// The name every key's breaker carries (for events and metrics).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// How long a closed key with failures in its window is kept after its last call (see
    /// [`idle_ttl`](KeyedCircuitBreakerBuilder::idle_ttl)).
    pub fn idle_ttl(&self) -> Duration {
        Duration::from_nanos(self.shared.idle_ttl)
    }

    /// The policy every key's breaker follows (a copy: [`reconfigure`](Self::reconfigure)
    /// may replace it).
    pub fn policy(&self) -> BreakerPolicy {
        BreakerPolicy::clone(&lock(&self.shared.made_with).0)
    }

    /// Applies the policy of `settings` (thresholds, window, break, probes, waits, hint cap)
    /// to every key's breaker in place, and to keys made from now on, validated as
    /// [`build`](CircuitBreakerBuilder::build) validates it; on an error nothing changes. Its
    /// name, listeners, `max_keys`, `idle_ttl` and runtime are not changed (the table's
    /// bounds are fixed at build).
    ///
    /// Each key's breaker changes as [`CircuitBreaker::reconfigure`] says: a window of the
    /// same shape keeps its state and calls; one of another shape is reset, with its
    /// state-change event, unless it was forced open or closed by hand (it stays forced).
    /// Returns how many keys' breakers were reset. A listener that panics
    /// on one key's event does not leave the keys after it on the old policy: every key takes
    /// the new one, then the first such panic goes on to the caller.
    ///
    /// ```
    /// use tidewall::breaker::{CircuitBreaker, State, Window};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let per_host = CircuitBreaker::builder().consecutive_failures(2).keyed().build()?;
    /// let _ = per_host.call(&"a", || async { Err::<(), _>("down") }).await;
    /// // One failure: not enough under two in a row, enough under one.
    /// let reset = per_host.reconfigure(CircuitBreaker::builder().consecutive_failures(1))?;
    /// assert_eq!(reset, 0, "the window kept its shape");
    /// let _ = per_host.call(&"a", || async { Err::<(), _>("down") }).await;
    /// assert_eq!(per_host.state(&"a"), Some(State::Open));
    ///
    /// let reset = per_host.reconfigure(CircuitBreaker::builder().window(Window::Count { calls: 10 }))?;
    /// assert_eq!((reset, per_host.state(&"a")), (1, Some(State::Closed)));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`CircuitBreakerBuilder::build`].
    pub fn reconfigure<R2>(
        &self,
        settings: CircuitBreakerBuilder<R2>,
    ) -> Result<usize, ConfigError> {
        let (policy, max_open_hint) = settings.checked_policy()?;
        let shared = &*self.shared;
        // Published before the keys are visited: a key made after its shard was visited is
        // made with the new policy. Each key's breaker changes outside the table's locks, as
        // its state-change listeners may call back into the table.
        *lock(&shared.made_with) = (std::sync::Arc::new(policy.clone()), max_open_hint);
        // A listener that panics on one key's reset does not leave the others on the old
        // policy: every key takes it, then the first panic goes on to the caller.
        let mut steps = crate::telemetry::ListenerPanics::default();
        let resets = shared
            .keys
            .each(|entry| entry.breaker.clone())
            .into_iter()
            .filter(|breaker| {
                steps.run(|| breaker.shared.reconfigure(policy.clone(), max_open_hint))
                    == Some(super::Reconfigured::Reset)
            })
            .count();
        steps.resume(|| {});
        Ok(resets)
    }
}

impl<K, R> Clone for KeyedCircuitBreaker<K, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, R> fmt::Debug for KeyedCircuitBreaker<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("name", &self.shared.name)
            .field("keys", &self.shared.keys.len())
            .field("max_keys", &self.shared.keys.max_keys())
            .finish_non_exhaustive()
    }
}

impl<K, R> fmt::Debug for KeyedCircuitBreakerBuilder<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerBuilder")
            .field("max_keys", &self.max_keys)
            .field("idle_ttl", &self.idle_ttl)
            .finish_non_exhaustive()
    }
}
