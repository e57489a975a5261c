//! One call through the pipeline, as a single `async fn`: its future is one state machine
//! holding every stage's state inline, with no allocation.

use std::future::Future;
use std::time::Duration;

use super::Pipeline;
use super::stages::{Admission, Gate, Retries};
use crate::breaker::Outcome;
use crate::rt::{Runtime, instant_after};
use crate::time::FutureExt as _;
use crate::{Deadline, Error, Rejected, RetryAfter};

pub(super) async fn run<R, L, B, T, C, F, Fut, T2, E>(
    pipeline: &Pipeline<R, L, B, T, C>,
    deadline: Deadline,
    mut op: F,
    hint: impl Fn(&E) -> Option<Duration>,
) -> Result<T2, Error<E>>
where
    R: Runtime,
    L: Admission,
    B: Admission,
    T: Retries,
    C: Gate,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T2, E>>,
{
    let config = &pipeline.config;
    let rt = &config.rt;
    // One clock reading serves the whole happy path: the deadline, the limiter, the first
    // attempt's timeout. Later attempts read the clock again.
    let mut now = rt.now();
    let deadline = match config.budget {
        Some(budget) => deadline.min(Deadline::at(instant_after(now, budget))),
        None => deadline,
    };
    config.limiter.admit(now, deadline).await?;
    let _slot = config.bulkhead.admit(now, deadline).await?;
    if let Some(budget) = config.retry.budget() {
        budget.deposit(now);
    }
    let mut delays = None;
    let mut first = true;
    loop {
        if !first {
            now = rt.now();
        }
        first = false;
        if !deadline.allows(now, config.min_attempt_time) {
            return Err(Error::Rejected(Rejected::DeadlineExceeded));
        }
        let failure = match config.breaker.enter() {
            Err(rejected) => Error::Rejected(rejected),
            Ok(permit) => {
                let attempt_end = match config.attempt_timeout {
                    Some(timeout) => deadline.min(Deadline::at(instant_after(now, timeout))),
                    None => deadline,
                };
                match bounded(rt, op(), attempt_end).await {
                    Ok(Ok(value)) => {
                        C::record(permit, Outcome::Success);
                        return Ok(value);
                    }
                    Ok(Err(error)) => {
                        C::record(permit, Outcome::Failure);
                        Error::Inner(error)
                    }
                    Err(_) => {
                        C::record(permit, Outcome::Failure);
                        if deadline.is_expired(rt.now()) {
                            return Err(Error::Rejected(Rejected::DeadlineExceeded));
                        }
                        Error::TimedOut
                    }
                }
            }
        };
        let Some(scheduled) = config.retry.next_delay(&mut delays, config.seed) else {
            return Err(failure);
        };
        let hinted = match &failure {
            Error::Rejected(rejected) => rejected.retry_after(),
            Error::Inner(error) => hint(error),
            Error::TimedOut => None,
        };
        let delay = hinted.map_or(scheduled, |h| {
            scheduled.max(h.min(config.retry.max_retry_after()))
        });
        // A retry that cannot start (with its minimum time) before the deadline is not
        // started: the caller gets the real failure now instead of a pointless sleep.
        if !deadline.allows(rt.now(), delay.saturating_add(config.min_attempt_time)) {
            return Err(failure);
        }
        if let Some(budget) = config.retry.budget()
            && !budget.try_withdraw(rt.now())
        {
            return Err(failure);
        }
        if !delay.is_zero() {
            rt.sleep(delay).await;
        }
    }
}

/// Runs `attempt` until `end`. A first poll that finishes needs no timer at all, so the
/// happy path never registers one with the runtime.
async fn bounded<R: Runtime, F: Future>(
    rt: &R,
    attempt: F,
    end: Deadline,
) -> Result<F::Output, crate::time::DeadlineExceeded> {
    let mut attempt = std::pin::pin!(attempt);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(attempt.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(output) => Ok(output),
        std::task::Poll::Pending => attempt.deadline_on(rt, end).await,
    }
}
