//! Retry budget: cap retries at a share of the traffic, across every caller that shares it.
//!
//! Retries multiply load exactly when a dependency is struggling. A [`RetryBudget`] shared by
//! all callers of one dependency lets retries add at most `ratio` of the calls of the last
//! `window` (plus a floor of `min_per_second` retries a second, `min_per_second × window`
//! over the window, so a quiet service can still retry). The
//! accounting is exact integer arithmetic (see [`RetryBudgetPolicy`]) over a ring of packed
//! bucket words. Deposits (every call) are one lock-free compare-and-swap; withdrawals (one per
//! retry, so rare) are serialized by a small lock so that concurrent retries can never
//! overdraw the budget, even when they straddle a bucket boundary.
//!
//! Use it with [`Retry::budget`](crate::retry::Retry::budget), the
//! [`Pipeline`](crate::pipeline), the tower retry layer, or by hand:
//!
//! ```
//! use std::time::Instant;
//! use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
//!
//! let policy = RetryBudgetPolicy::builder().ratio(0.1).min_per_second(0).build()?;
//! let budget = RetryBudget::new(policy, Instant::now());
//! let now = Instant::now();
//! for _ in 0..100 {
//!     budget.deposit(now);
//! }
//! let granted = (0..50).filter(|_| budget.try_withdraw(now)).count();
//! assert_eq!(granted, 10);
//! # Ok::<(), tidewall::ConfigError>(())
//! ```

use std::time::Instant;

use tidewall_core::breaker::window::Bucket;
pub use tidewall_core::budget::{RetryBudgetBuilder, RetryBudgetPolicy};

use crate::bucket_ring::{BucketRing, stamp};
use crate::sync::{Arc, Mutex, Swap, lock, nanos_since};

/// A shared retry budget. Cheap to clone: clones share the balance.
///
/// Right at any age: a budget built long before its first use, or idle for any time between
/// uses, counts exactly the calls and retries of its last window. The window slides by whole
/// buckets (`window / buckets`, counted from `origin`): a call counts from its bucket's start
/// until `window` later, so for between `window − window / buckets` and `window` after it was
/// made. Its memory is one word per bucket (at most
/// [`MAX_BUCKETS`](tidewall_core::breaker::MAX_BUCKETS), 1024).
///
/// A bucket counts at most 16,777,215 calls and as many retries: past that a deposit stops
/// counting and a withdrawal is refused, which only makes the budget stricter
/// ([`balance`](Self::balance) and [`has_balance`](Self::has_balance) judge by the policy
/// alone, and do not see this cap).
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    /// Replaced whole by `reconfigure`.
    current: Swap<Current>,
    origin: Instant,
    /// Serializes withdrawals and reconfigurations; holds the epoch of the last withdrawal in
    /// the window in force (none yet, or none since its shape changed).
    withdrawals: Mutex<Option<u64>>,
}

/// The policy in force and the window it counts in.
struct Current {
    policy: RetryBudgetPolicy,
    /// Kept by a reconfiguration that leaves its shape (window and buckets) as it was.
    window: std::sync::Arc<Window>,
}

struct Window {
    ring: BucketRing,
    bucket_nanos: u64,
}

impl Window {
    fn new(policy: &RetryBudgetPolicy) -> Self {
        let buckets = policy.buckets();
        let window = u64::try_from(policy.window().as_nanos()).unwrap_or(u64::MAX);
        Self {
            ring: BucketRing::new(Bucket::BUDGET, buckets),
            // The policy guarantees at least one nanosecond per bucket.
            bucket_nanos: (window / u64::from(buckets.max(1))).max(1),
        }
    }

    fn epoch(&self, origin: Instant, now: Instant) -> u64 {
        let nanos = nanos_since(origin, now);
        if nanos < u64::MAX {
            return nanos / self.bucket_nanos;
        }
        // Past 584 years from the origin the nanoseconds no longer fit a u64; the buckets do.
        let elapsed = now.saturating_duration_since(origin).as_nanos();
        u64::try_from(elapsed / u128::from(self.bucket_nanos)).unwrap_or(u64::MAX)
    }
}

fn same_shape(a: &RetryBudgetPolicy, b: &RetryBudgetPolicy) -> bool {
    (a.window(), a.buckets()) == (b.window(), b.buckets())
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("policy", &self.policy())
            .finish_non_exhaustive()
    }
}

impl RetryBudget {
    /// A budget following `policy`, with `origin` as the start of its clock (any instant of
    /// the runtime clock you will pass to it, e.g. `rt.now()`).
    pub fn new(policy: RetryBudgetPolicy, origin: Instant) -> Self {
        Self {
            inner: Arc::new(Inner {
                current: Swap::new(Current {
                    window: std::sync::Arc::new(Window::new(&policy)),
                    policy,
                }),
                origin,
                withdrawals: Mutex::new(None),
            }),
        }
    }

    /// Records one call (a first attempt). A full bucket (16.7 M calls) stops counting, which
    /// only ever makes the budget stricter.
    pub fn deposit(&self, now: Instant) {
        let current = self.inner.current.load();
        let window = &current.window;
        window
            .ring
            .add(window.epoch(self.inner.origin, now), [1, 0, 0]);
    }

    /// Whether one retry would be granted now (without taking it).
    pub fn has_balance(&self, now: Instant) -> bool {
        let current = self.inner.current.load();
        let window = &current.window;
        let [deposits, withdrawals, _] = window
            .ring
            .totals(window.epoch(self.inner.origin, now), None);
        current.policy.allows(deposits, withdrawals)
    }

    /// How many retries the budget would grant now, one after another (saturating at
    /// `u64::MAX`): a reading for gauges and health pages.
    ///
    /// ```
    /// use std::time::Instant;
    /// use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
    ///
    /// let now = Instant::now();
    /// let budget = RetryBudget::new(RetryBudgetPolicy::builder().ratio(0.1).min_per_second(0).build()?, now);
    /// (0..100).for_each(|_| budget.deposit(now));
    /// assert!(budget.try_withdraw(now));
    /// assert_eq!(budget.balance(now), 9);
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn balance(&self, now: Instant) -> u64 {
        let current = self.inner.current.load();
        let window = &current.window;
        let [deposits, withdrawals, _] = window
            .ring
            .totals(window.epoch(self.inner.origin, now), None);
        current.policy.balance(deposits, withdrawals)
    }

    /// Takes one retry from the budget if the balance allows it.
    ///
    /// Withdrawals (one per retry, so rare next to deposits) are serialized by a small lock,
    /// and each one uses an epoch no earlier than the last withdrawal's: so every withdrawal
    /// sees all earlier ones still in the window, even when racing callers straddle a bucket
    /// boundary, and the budget can never be overdrawn. Deposits stay lock-free; a deposit
    /// racing a withdrawal only makes its compare-and-swap retry.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut last_epoch = lock(&self.inner.withdrawals);
        let budget = self.inner.current.load();
        let ring = &budget.window.ring;
        let epoch = budget
            .window
            .epoch(self.inner.origin, now)
            .max(last_epoch.unwrap_or(0));
        let slot = ring.slot(epoch);
        ring.prepare(epoch);
        loop {
            let current = ring.load(slot);
            let [deposits, withdrawals, _] = ring.totals(epoch, Some((slot, current)));
            if !budget.policy.allows(deposits, withdrawals) {
                return false;
            }
            let Some(next) = ring.layout().add(current, stamp(epoch), [0, 1, 0]) else {
                return false;
            };
            if ring.replace(slot, current, next) {
                *last_epoch = Some(epoch);
                return true;
            }
        }
    }

    /// Whether another handle shares this budget (under the keyed table's lock, where
    /// handles are made, a `false` stays `false`).
    #[cfg(feature = "http")]
    pub(crate) fn is_shared(&self) -> bool {
        Arc::strong_count(&self.inner) > 1
    }

    /// When the bucket of the latest withdrawal ends, in nanoseconds from `origin`
    /// (saturated; zero when the window in force has none): a retry counts until `window`
    /// after it.
    #[cfg(feature = "http")]
    pub(crate) fn withdrawn_until(&self) -> u64 {
        // Both under the lock, as a reconfiguration changes them together.
        let last_epoch = lock(&self.inner.withdrawals);
        let bucket_nanos = self.inner.current.load().window.bucket_nanos;
        last_epoch.map_or(0, |epoch| {
            epoch.saturating_add(1).saturating_mul(bucket_nanos)
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> RetryBudgetPolicy {
        self.inner.current.load().policy
    }

    /// Follows `policy` from now on, shared by every clone. A policy with the same window
    /// and buckets keeps the calls and retries counted so far (a new ratio or floor judges
    /// them from the next withdrawal); another shape starts an empty window, which only
    /// leaves the floor (`min_per_second`) until calls come in again.
    ///
    /// ```
    /// use std::time::Instant;
    /// use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
    ///
    /// let now = Instant::now();
    /// let budget = RetryBudget::new(RetryBudgetPolicy::builder().ratio(0.1).min_per_second(0).build()?, now);
    /// (0..100).for_each(|_| budget.deposit(now));
    /// assert_eq!((0..50).filter(|_| budget.try_withdraw(now)).count(), 10);
    /// budget.reconfigure(RetryBudgetPolicy::builder().ratio(0.2).min_per_second(0).build()?);
    /// assert_eq!((0..50).filter(|_| budget.try_withdraw(now)).count(), 10, "20 in all now");
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn reconfigure(&self, policy: RetryBudgetPolicy) {
        let mut last_epoch = lock(&self.inner.withdrawals);
        let window = {
            let current = self.inner.current.load();
            if same_shape(&current.policy, &policy) {
                std::sync::Arc::clone(&current.window)
            } else {
                *last_epoch = None;
                std::sync::Arc::new(Window::new(&policy))
            }
        };
        self.inner.current.store(Current { policy, window });
    }
}
