//! A retry budget per authority, in the keyed table.

use std::time::Instant;

use crate::ConfigError;
use crate::budget::{RetryBudget, RetryBudgetPolicy};
use crate::http::Authority;
use crate::keyed_map::{Evict, Eviction, KeyedMap, Slot};
use crate::sync::{Mutex, lock, nanos_since};

/// `policy`'s window in nanoseconds (saturated: a window past `u64` never rests).
fn window_of(policy: RetryBudgetPolicy) -> u64 {
    u64::try_from(policy.window().as_nanos()).unwrap_or(u64::MAX)
}

pub(super) struct Budgets {
    /// What a new authority's budget follows, and its window in nanoseconds: read only to
    /// make one, replaced by `reconfigure`.
    policy: Mutex<(RetryBudgetPolicy, u64)>,
    origin: Instant,
    keys: KeyedMap<Authority, Entry>,
}

struct Entry {
    budget: RetryBudget,
    /// When a call last took it (and deposited), on the table's clock, the budget's own.
    last_used: u64,
    window: u64,
}

impl Evict for Entry {
    fn eviction(&self, now: u64) -> Eviction {
        // A budget a call still holds would count its retries in a copy nobody reads.
        if self.budget.is_shared() {
            return Eviction::Blocked;
        }
        // A window with no call and no retry in it is a fresh budget: forgetting it loses
        // nothing. A call's retries may come long after it took the budget.
        let touched = self.last_used.max(self.budget.withdrawn_until());
        let rested = touched.saturating_add(self.window);
        if now >= rested {
            Eviction::Now
        } else {
            Eviction::At(rested)
        }
    }
}

impl Budgets {
    pub(super) fn new(
        policy: RetryBudgetPolicy,
        max_keys: usize,
        origin: Instant,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            policy: Mutex::new((policy, window_of(policy))),
            origin,
            keys: KeyedMap::new(max_keys)?,
        })
    }

    /// Every authority's budget follows `policy` from now on, keeping its window's counts
    /// when the window keeps its shape ([`RetryBudget::reconfigure`]), and so do the
    /// budgets made from now on.
    pub(super) fn reconfigure(&self, policy: RetryBudgetPolicy) {
        let window = window_of(policy);
        self.keys.all_at_once(
            || *lock(&self.policy) = (policy, window),
            |(), entry| {
                entry.budget.reconfigure(policy);
                entry.window = window;
            },
        );
    }

    /// The authorities whose budgets the table holds.
    #[cfg(feature = "metrics")]
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The most authorities it holds at once.
    #[cfg(feature = "metrics")]
    pub(super) fn max_keys(&self) -> usize {
        self.keys.max_keys()
    }

    /// `authority`'s budget, made if new; `None` when the table is full of budgets in use.
    pub(super) fn get(
        &self,
        authority: &Authority,
        now: impl FnOnce() -> Instant,
    ) -> Option<RetryBudget> {
        self.keys
            .entry(
                authority,
                || nanos_since(self.origin, now()),
                |slot, now| match slot {
                    Slot::Found(entry) => {
                        entry.last_used = now;
                        (entry.budget.clone(), None)
                    }
                    Slot::Vacant => {
                        let (policy, window) = *lock(&self.policy);
                        let budget = RetryBudget::new(policy, self.origin);
                        let entry = Entry {
                            budget: budget.clone(),
                            last_used: now,
                            window,
                        };
                        (budget, Some(entry))
                    }
                },
            )
            .ok()
    }
}
