//! The retry decision engine. The retry future, the pipeline's retry stage, the tower
//! `RetryLayer` and hedging only run attempts and sleep; whether an attempt may start,
//! whether a failure is retried, whether a hedge may go and for how long to wait are decided
//! here, once, so the fronts cannot drift.

use std::time::{Duration, Instant};

use tidewall_core::backoff::{Backoff, DelayState};

use crate::Deadline;
use crate::budget::RetryBudget;
use crate::classify::Verdict;

/// The default cap on a server's "retry after" hint.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Whether an attempt needing `min_attempt_time` may start before `deadline`; reads the clock
/// only when there is a deadline. (A pipeline without a retry stage checks this alone.)
#[inline]
pub(crate) fn may_start(
    deadline: Deadline,
    min_attempt_time: Duration,
    now: impl FnOnce() -> Instant,
) -> bool {
    deadline.instant().is_none() || deadline.allows(now(), min_attempt_time)
}

/// Out of line: only calls with a budget pay for its code, so the plain retry's first poll
/// stays small enough to inline.
#[inline(never)]
fn deposit(budget: &RetryBudget, now: Instant) {
    budget.deposit(now);
}

/// What every front shares: the schedule, the budget, the hint cap and the minimum time an
/// attempt needs before the deadline.
#[derive(Debug, Clone)]
pub struct RetryRules {
    pub(crate) backoff: Backoff,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) max_retry_after: Duration,
    pub(crate) min_attempt_time: Duration,
    pub(crate) seed: Option<u64>,
}

/// One call's progress through the rules.
#[derive(Debug, Default)]
pub(crate) struct Attempts {
    started: u32,
    // Created on the first failure, so the success path never seeds a generator.
    delays: Option<DelayState>,
}

impl Attempts {
    /// Attempts started so far.
    #[inline]
    pub(crate) fn started(&self) -> u32 {
        self.started
    }
}

/// The engine's answer after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Sleep this long, then attempt again (the budget has already paid for it).
    Retry(Duration),
    /// Do not retry; the last result stands.
    Stop(Stop),
}

/// Why no retry follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The verdict was not a retryable failure.
    Final,
    /// The backoff schedule has no delay left.
    Exhausted,
    /// The next attempt could not start, with its minimum time, before the deadline.
    Deadline,
    /// The retry budget is spent.
    BudgetSpent,
}

impl RetryRules {
    /// Rules with the defaults every front starts from.
    #[inline]
    pub(crate) fn new(backoff: Backoff) -> Self {
        Self {
            backoff,
            budget: None,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            min_attempt_time: Duration::ZERO,
            seed: None,
        }
    }

    /// Whether an attempt may start: the deadline leaves it its minimum time. Reads the clock
    /// only when there is a deadline.
    #[inline]
    pub(crate) fn may_start(&self, deadline: Deadline, now: impl FnOnce() -> Instant) -> bool {
        may_start(deadline, self.min_attempt_time, now)
    }

    /// Counts an attempt as started; the first one of a call deposits into the budget.
    #[inline]
    pub(crate) fn begin(&self, attempts: &mut Attempts, now: impl FnOnce() -> Instant) {
        if attempts.started == 0
            && let Some(budget) = &self.budget
        {
            deposit(budget, now());
        }
        attempts.started = attempts.started.saturating_add(1);
    }

    /// After an attempt judged `verdict` (with the server's `hint`, if any): retry after a
    /// delay, or stop. The delay is the schedule's, raised to the hint (capped at
    /// `max_retry_after`); a retry whose sleep — or whose whole hint, cap or not — plus
    /// minimum attempt time would pass the deadline is not taken, and only a retry that is
    /// taken withdraws from the budget.
    /// Reads the clock only when a deadline or budget needs it.
    #[inline]
    pub(crate) fn after(
        &self,
        attempts: &mut Attempts,
        verdict: Verdict,
        hint: Option<Duration>,
        deadline: Deadline,
        now: impl FnOnce() -> Instant,
    ) -> Step {
        // Inline: a success (the common case) ends here, without a call.
        if !verdict.is_retryable() {
            return Step::Stop(Stop::Final);
        }
        self.after_retryable(attempts, hint, deadline, now)
    }

    /// What [`after`](Self::after) answers for an attempt that no retry can follow, because
    /// the front sent its only copy of the request (`retry_possible` said no retry could
    /// come, or the request could not be copied): the same stop `after` would give, the
    /// deadline's included; in place of a retry, a spent budget when the budget has none, else
    /// the schedule's end (the request is gone, as the attempts are); nothing withdrawn.
    pub(crate) fn after_last(
        &self,
        attempts: &mut Attempts,
        verdict: Verdict,
        hint: Option<Duration>,
        deadline: Deadline,
        now: impl FnOnce() -> Instant,
    ) -> Stop {
        if !verdict.is_retryable() {
            return Stop::Final;
        }
        match self.retry_delay(attempts, hint, deadline, now) {
            Err(stop) => stop,
            Ok((_, Some(now)))
                if self
                    .budget
                    .as_ref()
                    .is_some_and(|budget| !budget.has_balance(now)) =>
            {
                Stop::BudgetSpent
            }
            Ok(_) => Stop::Exhausted,
        }
    }

    /// [`after`](Self::after) for a retryable failure.
    fn after_retryable(
        &self,
        attempts: &mut Attempts,
        hint: Option<Duration>,
        deadline: Deadline,
        now: impl FnOnce() -> Instant,
    ) -> Step {
        match self.retry_delay(attempts, hint, deadline, now) {
            Err(stop) => Step::Stop(stop),
            Ok((delay, None)) => Step::Retry(delay),
            Ok((delay, Some(now))) if self.withdraw(now) => Step::Retry(delay),
            Ok(_) => Step::Stop(Stop::BudgetSpent),
        }
    }

    /// The next retry's delay, or why the schedule or the deadline takes none, before the
    /// budget is asked; with the time read for the deadline or the budget, when either
    /// needs it.
    fn retry_delay(
        &self,
        attempts: &mut Attempts,
        hint: Option<Duration>,
        deadline: Deadline,
        now: impl FnOnce() -> Instant,
    ) -> Result<(Duration, Option<Instant>), Stop> {
        let delays = attempts.delays.get_or_insert_with(|| self.start_delays());
        let Some(scheduled) = self.backoff.next_delay(delays) else {
            return Err(Stop::Exhausted);
        };
        let delay = hint.map_or(scheduled, |hint| {
            scheduled.max(hint.min(self.max_retry_after))
        });
        if deadline.instant().is_none() && self.budget.is_none() {
            return Ok((delay, None));
        }
        // The deadline is held against the whole hint, not the capped sleep: a retry made
        // before the hint ends would be refused again (an open breaker) or go against the
        // server's word, and none can wait it out before the deadline.
        let earliest = hint.map_or(delay, |hint| delay.max(hint));
        let now = now();
        if !deadline.allows(now, earliest.saturating_add(self.min_attempt_time)) {
            return Err(Stop::Deadline);
        }
        Ok((delay, Some(now)))
    }

    /// Whether the schedule allows an attempt beyond those started. (A schedule with a cap on
    /// its total delay may end sooner; `after` finds that out when it draws the delay.)
    #[inline]
    pub(crate) fn attempt_left(&self, attempts: &Attempts) -> bool {
        attempts.started < self.backoff.max_attempts_total()
    }

    /// Starts an attempt alongside those still running (a hedge whose wait is over, or that
    /// is due because every running attempt failed), if the schedule has one left and the
    /// budget pays for it.
    pub(crate) fn launch(&self, attempts: &mut Attempts, now: impl FnOnce() -> Instant) -> bool {
        let allowed =
            self.attempt_left(attempts) && (self.budget.is_none() || self.withdraw(now()));
        if allowed {
            attempts.started = attempts.started.saturating_add(1);
        }
        allowed
    }

    /// Takes one retry (or hedge) from the budget, if there is a budget.
    fn withdraw(&self, now: Instant) -> bool {
        self.budget
            .as_ref()
            .is_none_or(|budget| budget.try_withdraw(now))
    }

    /// Whether a failure of the next attempt could still be retried: the schedule has a
    /// delay left and the budget a retry in it. Lets a front skip work (cloning a request)
    /// that only a retry needs.
    pub(crate) fn retry_possible(
        &self,
        attempts: &mut Attempts,
        now: impl FnOnce() -> Instant,
    ) -> bool {
        let delay_left = if self.backoff.max_elapsed_budget().is_none() {
            // Without a cap on the total delay, a delay is left exactly while attempts are
            // (the attempt just begun is counted): no need to seed and draw a schedule that
            // a call which succeeds at once never uses.
            self.attempt_left(attempts)
        } else {
            // Peek on a copy of the schedule, seeded as the real one will be.
            let mut delays = attempts
                .delays
                .get_or_insert_with(|| self.start_delays())
                .clone();
            self.backoff.next_delay(&mut delays).is_some()
        };
        delay_left && self.budget.as_ref().is_none_or(|b| b.has_balance(now()))
    }

    fn start_delays(&self) -> DelayState {
        self.backoff
            .start(self.seed.unwrap_or_else(crate::seed::fresh_seed))
    }
}

/// Keeps a value that is about to be retried (a retryable `Ok`, such as a 503 response): the
/// answer of a call the deadline ends later, past later errors and timeouts. Boxed by the
/// fronts that keep one, so that only calls retrying a value pay for its room in their future;
/// out of line, as few calls do.
#[cold]
#[inline(never)]
pub(crate) fn keep_value<T>(kept: &mut Option<Box<T>>, value: T) {
    match kept {
        Some(room) => **room = value,
        None => *kept = Some(Box::new(value)),
    }
}
