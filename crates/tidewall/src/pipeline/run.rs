//! One call through the pipeline, as a single `async fn`: its future is one state machine
//! holding every stage's state inline, with no allocation (but the kept value of a call that
//! retries one), and it reads the clock only when
//! something has to wait.

use std::future::Future;
use std::time::Duration;

use super::Pipeline;
use super::operation::Operation;
use super::stages::{Gate, Retries};
use crate::admission::{Admission, Wait};
use crate::breaker::Outcome;
use crate::classify::{Classify, Verdict, judge};
use crate::retry::engine::{Attempts, Step, Stop, keep_value, may_start};
use crate::rt::{Clock, instant_after};
use crate::telemetry::CallOutcome;
use crate::time::FutureExt as _;
use crate::{Deadline, Error, Rejected, RetryAfter};

/// Runs `op` through `pipeline`'s stages, judging results with `classify` (the pipeline's
/// own, or a [`LivePipeline`](crate::config::LivePipeline)'s, which keeps its classifier
/// across the pipelines a reload builds).
pub(crate) async fn run<R, L, B, T, C, K0, K, O, T2, E>(
    pipeline: &Pipeline<R, L, B, T, C, K0>,
    classify: &K,
    deadline: Deadline,
    mut op: O,
) -> Result<T2, Error<E>>
where
    R: Clock,
    L: Admission,
    B: Admission,
    T: Retries,
    C: Gate,
    K: Classify<T2, E>,
    O: Operation<Attempt: Future<Output = Result<T2, E>>>,
{
    let config = &pipeline.config;
    let rt = &config.rt;
    let mut clock = CallClock {
        rt,
        start: None,
        caller: deadline,
        budget: config.budget,
    };
    // Observed here rather than by a wrapping future, which cost the happy path 20-35 ns
    // (its output moved through memory) even with nothing to report.
    let watch = pipeline.telemetry.watch(rt, None);
    // Held for the whole call, and told how it ended (`Admission::finish`); a cancelled call
    // drops them untold.
    let mut admitted = None;
    let mut slot = None;
    // How the last attempt that reached the service went, if one did: an ending before any
    // (a wait refused at the deadline, a first attempt with no time left, every attempt
    // refused below) teaches the admission stages nothing, and a later refusal of a retry (an
    // open breaker, here or below) teaches them that attempt's outcome.
    let mut called = None;
    // The refusal the last attempt met below the pipeline (see `Operation::refused`), if it
    // was one: the call's outcome when that attempt ends it.
    let mut refused_below = None;
    let (result, verdict) = 'call: {
        // A wait for admission must leave the first attempt its minimum time: one that could
        // not is refused at once instead of waiting only to be refused.
        admitted = Some(match config.limiter.try_admit() {
            Some(guard) => guard,
            None => {
                let until = reserving(clock.deadline(), config.min_attempt_time);
                match config.limiter.admit(Wait::Until(until)).await {
                    Ok(guard) => guard,
                    Err(refused) => break 'call (Err(Error::Rejected(refused)), None),
                }
            }
        });
        slot = Some(match config.bulkhead.try_admit() {
            Some(guard) => guard,
            None => {
                let until = reserving(clock.deadline(), config.min_attempt_time);
                match config.bulkhead.admit(Wait::Until(until)).await {
                    Ok(guard) => guard,
                    Err(refused) => break 'call (Err(Error::Rejected(refused)), None),
                }
            }
        });
        let rules = config.retry.rules();
        let mut attempts = Attempts::default();
        // The latest value an attempt got that was retried (a retryable `Ok`, such as a 503
        // response): what the deadline's end answers with, past later errors and timeouts.
        // Boxed: only calls that retry a value pay for its room in the call's future.
        let mut kept: Option<Box<T2>> = None;
        loop {
            refused_below = None;
            // Before a retry, when the caller brought a deadline, or once the pipeline's own
            // budget has started (a wait for the limiter or the bulkhead read the clock), check
            // it. Only a first attempt that nothing has waited before, with no caller deadline,
            // needs no check: its budget has not started yet.
            if attempts.started() > 0 || deadline.instant().is_some() || clock.start.is_some() {
                let before = clock.deadline();
                if !may_start(before, config.min_attempt_time, || clock.now()) {
                    break 'call deadline_end(kept);
                }
            }
            pipeline.telemetry.attempt(attempts.started() + 1);
            if let Some(rules) = rules {
                rules.begin(&mut attempts, || clock.now());
            }
            let (verdict, hinted, last) = match config.breaker.enter() {
                // A rejection is retried after its own `retry_after`, not within it.
                Err(rejected) => (
                    Verdict::RetryableFailure,
                    rejected.retry_after(),
                    Err(Error::Rejected(rejected)),
                ),
                Ok(permit) => {
                    let attempt_end = |clock: &mut CallClock<'_, R>| match config.attempt_timeout {
                        Some(timeout) => {
                            let now = clock.now();
                            clock
                                .deadline()
                                .min(Deadline::at(instant_after(now, timeout)))
                        }
                        None => clock.deadline(),
                    };
                    let called_before = called.replace(Outcome::Ignored);
                    let attempt = |clock: &mut CallClock<'_, R>| {
                        op.attempt(|| {
                            rules.is_some_and(|r| r.retry_possible(&mut attempts, || clock.now()))
                        })
                    };
                    match bounded(rt, attempt, &mut clock, attempt_end).await {
                        Ok(result) => match O::refused(&result) {
                            // Refused below the pipeline: as the pipeline breaker's own refusal
                            // (the arm above), it teaches nothing and is retried after its own
                            // `retry_after`, unless it can never pass.
                            Some(refusal) => {
                                C::record(permit, Outcome::Ignored, None);
                                called = called_before;
                                let verdict = match refusal {
                                    Rejected::InsufficientCapacity { .. } => Verdict::Failure,
                                    _ => Verdict::RetryableFailure,
                                };
                                let hint = refusal.retry_after();
                                refused_below = Some(refusal);
                                (verdict, hint, result.map_err(Error::Inner))
                            }
                            None => {
                                let (verdict, hint) = judge(classify, result.as_ref());
                                called = Some(verdict.breaker_outcome());
                                C::record(permit, verdict.breaker_outcome(), hint);
                                (verdict, hint, result.map_err(Error::Inner))
                            }
                        },
                        Err(_) => {
                            let now = clock.now();
                            if clock.deadline().is_expired(now) {
                                // Cut off by the caller's deadline, not by the service: that says
                                // nothing about the service's health, so the breaker ignores it
                                // (and a probe gives its slot back).
                                C::record(permit, Outcome::Ignored, None);
                                break 'call deadline_end(kept);
                            }
                            C::record(permit, Outcome::Failure, None);
                            called = Some(Outcome::Failure);
                            (Verdict::RetryableFailure, None, Err(Error::TimedOut))
                        }
                    }
                }
            };
            let Some(rules) = rules else {
                break 'call (last, Some(verdict));
            };
            let after = clock.deadline();
            let step = if op.repeatable() {
                rules.after(&mut attempts, verdict, hinted, after, || clock.now())
            } else {
                // The operation gave its input to that attempt: the call ends as `after` would
                // end it, with no retry (see `after_last`).
                Step::Stop(rules.after_last(&mut attempts, verdict, hinted, after, || clock.now()))
            };
            match step {
                Step::Retry(delay) => {
                    if let Ok(value) = last {
                        keep_value(&mut kept, value);
                    }
                    pipeline.telemetry.retry(attempts.started(), delay, None);
                    if delay.is_zero() {
                        // Attempts that fail without waiting never hold the executor's thread.
                        crate::rt::yield_now().await;
                    } else {
                        rt.sleep(delay).await;
                    }
                }
                // A retry that cannot start (with its minimum time) before the deadline is not
                // started: the caller gets the real failure now instead of a pointless sleep (or,
                // past a later failure, the value an earlier attempt got).
                Step::Stop(stop) => {
                    if stop == Stop::BudgetSpent {
                        pipeline.telemetry.budget_spent(None);
                    }
                    if stop == Stop::Deadline && last.is_err() && kept.is_some() {
                        break 'call deadline_end(kept);
                    }
                    break 'call (last, Some(verdict));
                }
            }
        }
    };
    let outcome = match (&result, &refused_below, verdict) {
        (Err(Error::Rejected(why)), _, _) | (Err(Error::Inner(_)), Some(why), _) => {
            CallOutcome::Rejected(*why)
        }
        (Err(Error::TimedOut), _, _) => CallOutcome::TimedOut,
        (_, _, Some(verdict)) => verdict.breaker_outcome().into(),
        // Every other ending carries its verdict.
        (_, _, None) => CallOutcome::Failure,
    };
    let learned = match (called, &outcome) {
        (None, _) => Outcome::Ignored,
        (Some(attempt), CallOutcome::Rejected(why)) if *why != Rejected::DeadlineExceeded => {
            attempt
        }
        (Some(_), outcome) => outcome.learned(),
    };
    if let Some(guard) = slot {
        B::finish(guard, learned);
    }
    if let Some(guard) = admitted {
        L::finish(guard, learned);
    }
    if let Some(watch) = watch {
        watch.finish(outcome, rt);
    }
    result
}

/// The answer when the deadline ends a call: the latest value an attempt got (judged a
/// retryable failure, as it was retried), else [`Rejected::DeadlineExceeded`].
fn deadline_end<T, E>(kept: Option<Box<T>>) -> (Result<T, Error<E>>, Option<Verdict>) {
    match kept {
        Some(value) => (Ok(*value), Some(Verdict::RetryableFailure)),
        None => (Err(Error::Rejected(Rejected::DeadlineExceeded)), None),
    }
}

/// `deadline` brought forward by `min_attempt_time` and a nanosecond: a wait must end while
/// *more* than the minimum is left, as the first attempt's check (`may_start`) requires; a
/// wait that ended with exactly the minimum left would be waited out only to be refused.
fn reserving(deadline: Deadline, min_attempt_time: Duration) -> Deadline {
    let reserve = min_attempt_time.saturating_add(Duration::from_nanos(1));
    match deadline.instant() {
        Some(at) => Deadline::at(at.checked_sub(reserve).unwrap_or(at)),
        None => deadline,
    }
}

/// The call's clock, read only when something needs the time.
///
/// The pipeline's own deadline budget starts at the call's first clock reading: at once when
/// the call needs the time from the start (a caller deadline to check, a retry budget to
/// deposit into), otherwise at the first wait (limiter, bulkhead), the first attempt that is
/// pending, or the first retry. Before that point the call has only run code that did not
/// wait — which no timer could have interrupted anyway — so on the happy path (every stage
/// admits at once, the operation is ready on its first poll) no clock is read at all.
struct CallClock<'r, R> {
    rt: &'r R,
    start: Option<std::time::Instant>,
    caller: Deadline,
    budget: Option<Duration>,
}

impl<R: Clock> CallClock<'_, R> {
    fn now(&mut self) -> std::time::Instant {
        let now = self.rt.now();
        self.start.get_or_insert(now);
        now
    }

    fn deadline(&mut self) -> Deadline {
        let Some(budget) = self.budget else {
            return self.caller;
        };
        let start = match self.start {
            Some(start) => start,
            None => self.now(),
        };
        self.caller.min(Deadline::at(instant_after(start, budget)))
    }
}

/// Runs the attempt `make` starts, bounded by the deadline `end` computes. A first poll that
/// finishes needs no clock and no timer, so the happy path registers nothing with the runtime.
///
/// The attempt is made here, where it is pinned, rather than passed in: a future passed in is
/// moved into place whole, and that copy reads back in wide loads what was just written in
/// narrow stores, which stalls on store forwarding (docs/BENCHMARKS.md, pipeline).
async fn bounded<'r, R: Clock, F: Future>(
    rt: &R,
    make: impl FnOnce(&mut CallClock<'r, R>) -> F,
    clock: &mut CallClock<'r, R>,
    end: impl FnOnce(&mut CallClock<'r, R>) -> Deadline,
) -> Result<F::Output, crate::time::DeadlineExceeded> {
    let mut attempt = std::pin::pin!(make(clock));
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(attempt.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(output) => Ok(output),
        std::task::Poll::Pending => {
            let end = end(clock);
            attempt.deadline_on(rt, end).await
        }
    }
}
