//! Retry budget: cap retries at a share of the traffic, across every caller that shares it.
//!
//! Retries multiply load exactly when a dependency is struggling. A [`RetryBudget`] shared by
//! all callers of one dependency lets retries add at most `ratio` of the calls of the last
//! `window` (plus a floor of `min_per_second`, so a quiet service can still retry). The
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

use crate::sync::{Arc, AtomicU64, Mutex, Ordering::Relaxed, lock, nanos_since};

/// A shared retry budget. Cheap to clone: clones share the balance.
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    policy: RetryBudgetPolicy,
    ring: Box<[AtomicU64]>,
    bucket_nanos: u64,
    origin: Instant,
    /// Serializes withdrawals; holds the epoch of the last one.
    withdrawals: Mutex<u64>,
}

impl std::fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBudget")
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl RetryBudget {
    /// A budget following `policy`, with `origin` as the start of its clock (any instant of
    /// the runtime clock you will pass to it, e.g. `rt.now()`).
    pub fn new(policy: RetryBudgetPolicy, origin: Instant) -> Self {
        let buckets = policy.buckets();
        let window = u64::try_from(policy.window().as_nanos()).unwrap_or(u64::MAX);
        Self {
            inner: Arc::new(Inner {
                ring: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
                bucket_nanos: window / u64::from(buckets),
                origin,
                withdrawals: Mutex::new(0),
                policy,
            }),
        }
    }

    fn epoch(&self, now: Instant) -> (u64, usize) {
        let epoch = nanos_since(self.inner.origin, now) / self.inner.bucket_nanos;
        (epoch, self.slot_of(epoch))
    }

    fn slot_of(&self, epoch: u64) -> usize {
        usize::try_from(epoch % self.inner.ring.len() as u64).unwrap_or(0)
    }

    /// Records one call (a first attempt). A full bucket (16.7 M calls) stops counting, which
    /// only ever makes the budget stricter.
    pub fn deposit(&self, now: Instant) {
        self.add(now, [1, 0, 0]);
    }

    fn add(&self, now: Instant, add: [u64; 3]) -> bool {
        let (epoch, slot) = self.epoch(now);
        let cell = &self.inner.ring[slot];
        let mut word = cell.load(Relaxed);
        // Bucket stamps are epochs modulo 2^16.
        #[allow(clippy::cast_possible_truncation)]
        let stamp = epoch as u16;
        while let Some(next) = Bucket::BUDGET.add(word, stamp, add) {
            match cell.compare_exchange_weak(word, next, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(seen) => word = seen,
            }
        }
        false
    }

    /// Whether one retry would be granted now (without taking it).
    pub fn has_balance(&self, now: Instant) -> bool {
        let (epoch, _) = self.epoch(now);
        let len = self.inner.ring.len() as u64;
        let (mut deposits, mut withdrawals) = (0, 0);
        for (i, bucket) in self.inner.ring.iter().enumerate() {
            let [d, w, _] = Bucket::BUDGET.live(bucket.load(Relaxed), i as u64, len, epoch);
            deposits += d;
            withdrawals += w;
        }
        self.inner.policy.allows(deposits, withdrawals)
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
        let epoch = self.epoch(now).0.max(*last_epoch);
        let slot = self.slot_of(epoch);
        let len = self.inner.ring.len() as u64;
        let cell = &self.inner.ring[slot];
        loop {
            let current = cell.load(Relaxed);
            let (mut deposits, mut withdrawals) = (0, 0);
            for (i, bucket) in self.inner.ring.iter().enumerate() {
                let word = if i == slot {
                    current
                } else {
                    bucket.load(Relaxed)
                };
                let [d, w, _] = Bucket::BUDGET.live(word, i as u64, len, epoch);
                deposits += d;
                withdrawals += w;
            }
            if !self.inner.policy.allows(deposits, withdrawals) {
                return false;
            }
            #[allow(clippy::cast_possible_truncation)]
            let Some(next) = Bucket::BUDGET.add(current, epoch as u16, [0, 1, 0]) else {
                return false;
            };
            if cell
                .compare_exchange(current, next, Relaxed, Relaxed)
                .is_ok()
            {
                *last_epoch = epoch;
                return true;
            }
        }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryBudgetPolicy {
        &self.inner.policy
    }
}
