//! New settings for a built stack, without a restart: the requests that start after run on
//! them, and each per-authority table the stack keeps is retuned in place, what it holds kept.

use super::builder::{ClientPoliciesBuilder, Stages};
use super::{ClientPolicies, Inner};
use crate::ConfigError;
use crate::rt::Clock;
use crate::sync::{MutexGuard, lock};
use crate::telemetry::ListenerPanics;

/// What a [`ClientPolicies::reconfigure`] did to the per-authority tables it kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retuned {
    /// Authorities whose breaker was reset because the breaker's window changed shape: every
    /// authority the table held then, open or closed, each now closed with an empty window
    /// and told with its state-change event; but a breaker forced open or closed by hand
    /// stays forced and is not counted
    /// ([`Reconfigured::KeptForced`](crate::breaker::Reconfigured::KeptForced)).
    pub breakers_reset: usize,
    /// Whether every authority's adaptive limit starts learning again from the new initial
    /// limit: the algorithm changed (another kind, or other settings of its own). Otherwise
    /// each keeps the limit it learned.
    pub relearning: bool,
}

/// A reconfiguration worked out and checked, to be applied whole: nothing in it can be
/// refused any more.
pub(crate) struct Plan<R> {
    policies: ClientPolicies<R>,
    next: Inner<R>,
    stages: Stages,
    relearn: bool,
}

/// A reconfiguration of a stack from a listener told of that stack's reconfiguration, on its
/// thread: waiting for the one in progress would be waiting for itself.
const REENTRANT: ConfigError = ConfigError::Conflict {
    reason: "a reconfiguration from a listener of the one in progress on this thread: \
             reconfigure from another task or thread",
};

/// The constraint a reconfiguration cannot change.
const FIXED: ConfigError = ConfigError::Conflict {
    reason: "max_authorities and idle_ttl bound the per-authority tables and are fixed at \
             build: build a new ClientPolicies to change them",
};

impl<R: Clock> ClientPolicies<R> {
    /// Applies `settings` to the stack, for every clone of it, without a restart. Checked
    /// whole first: on an error nothing changes.
    ///
    /// - A request that has started keeps the deadline, attempt timeout, retry schedule,
    ///   `Retry-After` cap, classifier and idempotency it started with; every request after
    ///   runs on the new ones.
    /// - Each per-authority table that is there before and after (breakers, bulkheads,
    ///   adaptive limits, rate limits, retry budgets) is the same table, retuned in place
    ///   for every authority it holds, at once (the next attempt of a request in flight meets
    ///   it): a breaker keeps its state and window unless the window changes shape (then it
    ///   is reset, with its event: [`Retuned::breakers_reset`], unless it was forced by
    ///   hand); a bulkhead shrunk below what is held revokes nothing; an adaptive limit keeps
    ///   what it learned unless its algorithm changed ([`Retuned::relearning`]); a retry
    ///   budget keeps its window's counts when the window keeps its shape.
    /// - A stage the new settings add starts empty; one they remove is gone for requests
    ///   after (requests in flight keep theirs), with what its table held: a host forced
    ///   open by hand is back in rotation once the breaker stage is removed (or removed and
    ///   added again).
    /// - The [name](ClientPoliciesBuilder::name), the [listener](ClientPoliciesBuilder::on_event)
    ///   and the runtime are kept: `settings`' are not read.
    ///
    /// Reconfigurations of one stack (from any clone, or a registry's reload) run one at a
    /// time, each on the stack the one before left. A listener that panics as a breaker is
    /// reset leaves nothing half done: every table takes its settings and the stack is
    /// replaced, then the first such panic goes on to the caller.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::breaker::CircuitBreaker;
    /// use tidewall::http::ClientPolicies;
    ///
    /// let policies = ClientPolicies::builder()
    ///     .deadline(Some(Duration::from_secs(30)))
    ///     .breaker(Some(CircuitBreaker::builder().consecutive_failures(5)))
    ///     .build()?;
    /// let stricter = ClientPolicies::builder()
    ///     .deadline(Some(Duration::from_secs(5)))
    ///     .breaker(Some(CircuitBreaker::builder().consecutive_failures(2)));
    /// let retuned = policies.reconfigure(stricter)?;
    /// assert_eq!(retuned.breakers_reset, 0, "the window kept its shape");
    ///
    /// // A table's bounds are fixed at build.
    /// assert!(policies.reconfigure(ClientPolicies::builder().max_authorities(10)).is_err());
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`ClientPoliciesBuilder::build`]; [`ConfigError::Conflict`] when `settings` change
    /// `max_authorities`, or the breakers' `idle_ttl` while both have breakers, and when
    /// called from a listener told of this stack's reconfiguration, on its thread.
    pub fn reconfigure<R2>(
        &self,
        settings: ClientPoliciesBuilder<R2>,
    ) -> Result<Retuned, ConfigError> {
        let _one_at_a_time = self.reconfiguring()?;
        Ok(self.plan(settings)?.apply())
    }

    /// Whether this thread is reconfiguring this stack (a listener told of it is running).
    pub(crate) fn reconfiguring_here(&self) -> bool {
        let address = std::ptr::from_ref(&*self.live).addr();
        RECONFIGURING.with_borrow(|here| here.contains(&address))
    }

    /// Waits for any reconfiguration of this stack in progress, and keeps others out until
    /// dropped: held from [`plan`](Self::plan) to [`Plan::apply`].
    pub(crate) fn reconfiguring(&self) -> Result<Reconfiguring<'_>, ConfigError> {
        if self.reconfiguring_here() {
            return Err(REENTRANT);
        }
        let address = std::ptr::from_ref(&*self.live).addr();
        let guard = lock(&self.live.reconfiguring);
        RECONFIGURING.with_borrow_mut(|here| here.push(address));
        Ok(Reconfiguring {
            _guard: guard,
            address,
        })
    }

    /// Works `settings` out against the stack in force, checking everything; applies nothing.
    pub(crate) fn plan<R2>(
        &self,
        settings: ClientPoliciesBuilder<R2>,
    ) -> Result<Plan<R>, ConfigError> {
        let now = self.current();
        let stages = settings.stages();
        // Tables it adds carry the stack's name, as those it keeps do.
        let mut next = settings
            .runtime(now.rt.clone())
            .name(self.live.telemetry.name().clone())
            .build_inner()?;
        if next.max_authorities != now.max_authorities {
            return Err(FIXED);
        }
        if let (Some(old), Some(new)) = (&now.breakers, &next.breakers)
            && old.idle_ttl() != new.idle_ttl()
        {
            return Err(FIXED);
        }
        // The tables there before and after are kept (their new twins, built only to check
        // the settings, are dropped unused); the others are as built.
        keep(&mut next.breakers, &now.breakers);
        keep(&mut next.bulkheads, &now.bulkheads);
        keep(&mut next.adaptive, &now.adaptive);
        keep(&mut next.limiters, &now.limiters);
        keep(&mut next.budgets, &now.budgets);
        let relearn = match (&now.adaptive, &stages.adaptive) {
            (Some(held), Some(wanted)) => held.algorithm_given() != *wanted.algorithm(),
            _ => false,
        };
        Ok(Plan {
            policies: self.clone(),
            next,
            stages,
            relearn,
        })
    }
}

thread_local! {
    /// The stacks this thread is reconfiguring, by address.
    static RECONFIGURING: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One stack's reconfiguration in progress on this thread, for as long as it lives.
pub(crate) struct Reconfiguring<'a> {
    _guard: MutexGuard<'a, ()>,
    address: usize,
}

impl Drop for Reconfiguring<'_> {
    fn drop(&mut self) {
        RECONFIGURING.with_borrow_mut(|here| here.retain(|a| *a != self.address));
    }
}

/// `next`'s table becomes `held`'s, when both stacks have the stage.
fn keep<T: Clone>(next: &mut Option<T>, held: &Option<T>) {
    if let (Some(next), Some(held)) = (next.as_mut(), held) {
        *next = held.clone();
    }
}

impl<R: Clock> Plan<R> {
    /// Retunes the kept tables and puts the new stack in force.
    pub(crate) fn apply(self) -> Retuned {
        let Self {
            policies,
            next,
            stages,
            relearn,
        } = self;
        let budget = stages.budget();
        let mut retuned = Retuned {
            breakers_reset: 0,
            relearning: relearn && next.adaptive.is_some(),
        };
        // Each table takes its settings whatever a listener does meanwhile (a table the plan
        // built retuned to its own settings changes nothing).
        let mut steps = ListenerPanics::default();
        if let (Some(table), Some(settings)) = (&next.breakers, stages.breaker) {
            let reset = steps.run(|| checked(table.reconfigure(settings)));
            retuned.breakers_reset = reset.flatten().unwrap_or(0);
        }
        if let (Some(table), Some(settings)) = (&next.bulkheads, stages.bulkhead) {
            steps.run(|| checked(table.reconfigure(settings)));
        }
        if let (Some(table), Some(settings)) = (&next.adaptive, stages.adaptive) {
            let (algorithm, settings) = settings.split();
            steps.run(|| checked(table.retune(&settings, relearn.then_some(algorithm))));
        }
        if let (Some(table), Some(settings)) = (&next.limiters, stages.rate_limit) {
            steps.run(|| checked(table.reconfigure(settings)));
        }
        if let (Some(budgets), Ok(Some(policy))) = (&next.budgets, budget) {
            steps.run(|| budgets.reconfigure(policy));
        }
        policies.live.stack.store(next);
        steps.resume(|| ());
        retuned
    }
}

/// Settings the plan built a table with cannot be refused by the table it keeps.
fn checked<T: std::fmt::Debug>(result: Result<T, ConfigError>) -> Option<T> {
    debug_assert!(result.is_ok(), "checked settings were refused: {result:?}");
    result.ok()
}
