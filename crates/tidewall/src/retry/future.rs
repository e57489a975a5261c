//! The retry state machine.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use super::RetryError;
use super::builder::{Retry, Settings};
use super::engine::{Attempts, Step, Stop};
use super::hooks::{Notify, Outcome, RetryEvent};
use crate::classify::{Classify, Verdict};
use crate::rt::{Clock, instant_after};

/// What an attempt left behind; kept until the next attempt replaces it.
enum Failure<T, E> {
    Error(E),
    Value(T),
    TimedOut,
}

impl<T, E> Failure<T, E> {
    fn outcome(&self) -> Outcome<'_, T, E> {
        match self {
            Self::Error(e) => Outcome::Error(e),
            Self::Value(v) => Outcome::Value(v),
            Self::TimedOut => Outcome::TimedOut,
        }
    }

    /// The result when no retry follows (a value is never thrown away).
    fn exhausted(self) -> Result<T, RetryError<E>> {
        match self {
            Self::Value(v) => Ok(v),
            Self::Error(e) => Err(RetryError::Inner(e)),
            Self::TimedOut => Err(RetryError::AttemptTimedOut),
        }
    }
}

/// The result when the deadline ends the operation: a retryable value is still a value.
#[cold]
#[inline(never)]
fn deadline_exceeded<T, E>(last: Option<Failure<T, E>>, attempts: u32) -> Result<T, RetryError<E>> {
    match last {
        Some(Failure::Value(v)) => Ok(v),
        Some(Failure::Error(e)) => Err(RetryError::DeadlineExceeded {
            last_error: Some(e),
            attempts,
        }),
        Some(Failure::TimedOut) | None => Err(RetryError::DeadlineExceeded {
            last_error: None,
            attempts,
        }),
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<Fut> {
        Idle,
        Attempt { #[pin] future: Fut },
        Sleeping,
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`Retry`]; see the [module docs](super) for its behaviour.
    #[must_use = "futures do nothing unless polled"]
    pub struct RetryFuture<Op, Fut, R: Clock, C, N, T, E> {
        // The configuration moves in whole, with no field-by-field rebuild.
        config: Retry<Op, R, C, N>,
        attempts: Attempts,
        last: Option<Failure<T, E>>,
        #[pin]
        state: State<Fut>,
        // One timer slot serves both the attempt's timeout/deadline and the backoff sleep:
        // they are never needed at the same time, and a runtime's sleep can be large.
        #[pin]
        timer: Option<R::Sleep>,
    }
}

impl<Op, Fut, R: Clock, C, N, T, E> RetryFuture<Op, Fut, R, C, N, T, E> {
    pub(super) fn new(retry: Retry<Op, R, C, N>) -> Self {
        Self {
            config: retry,
            attempts: Attempts::default(),
            last: None,
            state: State::Idle,
            timer: None,
        }
    }
}

impl<Op, Fut, R, C, N, T, E> Future for RetryFuture<Op, Fut, R, C, N, T, E>
where
    Op: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Clock,
    C: Classify<T, E>,
    N: Notify<T, E>,
{
    type Output = Result<T, RetryError<E>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The common case, kept small so it inlines where the retry is awaited: the first
        // attempt of a retry with no timer to arm, answered without a retryable failure.
        // `poll_slow` judges a finished attempt the same way; sharing that through a helper
        // stopped this from inlining (14 -> 21 ns in the retry bench), so it is written twice.
        let this = self.as_mut().project();
        let settings = &this.config.settings;
        let untimed = settings.attempt_timeout.is_none() && settings.deadline.instant().is_none();
        if untimed && this.attempts.started() == 0 && matches!(*this.state, State::Idle) {
            let (config, mut state) = (this.config, this.state);
            config
                .settings
                .rules
                .begin(this.attempts, || config.rt.now());
            state.set(State::Attempt {
                future: (config.op)(),
            });
            let StateProj::Attempt { future } = state.as_mut().project() else {
                unreachable!("the attempt was just set")
            };
            let Poll::Ready(result) = future.poll(cx) else {
                return Poll::Pending;
            };
            let verdict = config.classify.classify(result.as_ref());
            if !verdict.is_retryable() {
                return Poll::Ready(result.map_err(RetryError::Inner));
            }
            let failure = match result {
                Ok(value) => Failure::Value(value),
                Err(error) => Failure::Error(error),
            };
            return self.poll_slow(cx, Some((verdict, failure)));
        }
        self.poll_slow(cx, None)
    }
}

impl<Op, Fut, R, C, N, T, E> RetryFuture<Op, Fut, R, C, N, T, E>
where
    Op: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Clock,
    C: Classify<T, E>,
    N: Notify<T, E>,
{
    /// Every other step: later attempts, timeouts, the deadline, retries and their sleeps.
    /// `settled` is an attempt the fast path already ran to a retryable failure.
    #[inline(never)]
    fn poll_slow(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut settled: Option<(Verdict, Failure<T, E>)>,
    ) -> Poll<Result<T, RetryError<E>>> {
        let mut this = self.project();
        let config = this.config;
        loop {
            let settings: &Settings = &config.settings;
            let rules = &settings.rules;
            let (verdict, failure) = if let Some(settled) = settled.take() {
                settled
            } else {
                match this.state.as_mut().project() {
                    StateProj::Idle => {
                        if !rules.may_start(settings.deadline, || config.rt.now()) {
                            return Poll::Ready(deadline_exceeded(
                                this.last.take(),
                                this.attempts.started(),
                            ));
                        }
                        // The clock is read, and a timer armed, only when a timeout needs it.
                        let timer_at = if settings.attempt_timeout.is_some()
                            || settings.deadline.instant().is_some()
                        {
                            earliest(
                                settings
                                    .attempt_timeout
                                    .map(|t| instant_after(config.rt.now(), t)),
                                settings.deadline.instant(),
                            )
                        } else {
                            None
                        };
                        rules.begin(this.attempts, || config.rt.now());
                        let future = (config.op)();
                        // The slot is empty here: every path into `Idle` clears it.
                        if let Some(at) = timer_at {
                            arm(this.timer.as_mut(), &config.rt, at);
                        }
                        this.state.set(State::Attempt { future });
                        continue;
                    }
                    StateProj::Sleeping => {
                        if let Some(sleep) = this.timer.as_mut().as_pin_mut() {
                            ready!(sleep.poll(cx));
                        }
                        this.timer.set(None);
                        this.state.set(State::Idle);
                        continue;
                    }
                    StateProj::Attempt { future } => match future.poll(cx) {
                        Poll::Ready(result) => {
                            let verdict = config.classify.classify(result.as_ref());
                            if !verdict.is_retryable() {
                                // What the engine answers for any verdict but a retryable failure
                                // (`Stop::Final`), without building the failure first.
                                return Poll::Ready(result.map_err(RetryError::Inner));
                            }
                            match result {
                                Ok(value) => (verdict, Failure::Value(value)),
                                Err(error) => (verdict, Failure::Error(error)),
                            }
                        }
                        Poll::Pending => {
                            let Some(timer) = this.timer.as_mut().as_pin_mut() else {
                                return Poll::Pending;
                            };
                            ready!(timer.poll(cx));
                            if settings.deadline.is_expired(config.rt.now()) {
                                this.state.set(State::Idle);
                                return Poll::Ready(deadline_exceeded(
                                    this.last.take(),
                                    this.attempts.started(),
                                ));
                            }
                            (Verdict::RetryableFailure, Failure::TimedOut)
                        }
                    },
                }
            };
            this.state.set(State::Idle);
            this.timer.set(None);
            let delay = match after_failure(config, this.attempts, this.last, verdict, failure) {
                Ok(delay) => delay,
                Err(output) => return Poll::Ready(output),
            };
            if delay.is_zero() {
                // The next attempt at the next poll: attempts that fail without waiting never
                // hold the executor's thread (nor keep an outer timeout from firing).
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            this.timer.set(Some(config.rt.sleep(delay)));
            this.state.set(State::Sleeping);
        }
    }
}

/// Asks the engine what follows a failed attempt: the delay before the next one (after notifying
/// it), or the call's result. Kept out of `poll` so the success path stays small enough to be
/// inlined where the future is awaited.
#[inline(never)]
fn after_failure<Op, R, C, N, T, E>(
    config: &mut Retry<Op, R, C, N>,
    attempts: &mut Attempts,
    last: &mut Option<Failure<T, E>>,
    verdict: Verdict,
    failure: Failure<T, E>,
) -> Result<std::time::Duration, Result<T, RetryError<E>>>
where
    R: Clock,
    C: Classify<T, E>,
    N: Notify<T, E>,
{
    let settings = &config.settings;
    let hint = match &failure {
        Failure::Error(error) => config.classify.retry_after(Err(error)),
        Failure::Value(value) => config.classify.retry_after(Ok(value)),
        Failure::TimedOut => None,
    };
    let rt = &config.rt;
    let delay = match settings
        .rules
        .after(attempts, verdict, hint, settings.deadline, || rt.now())
    {
        Step::Retry(delay) => delay,
        Step::Stop(Stop::Deadline) => {
            // The sleep would end too late for another attempt: do not sleep at all.
            keep(last, failure);
            return Err(deadline_exceeded(last.take(), attempts.started()));
        }
        Step::Stop(Stop::BudgetSpent) => {
            config.notify.budget_spent(attempts.started());
            return Err(failure.exhausted());
        }
        Step::Stop(Stop::Final | Stop::Exhausted) => {
            return Err(failure.exhausted());
        }
    };
    let event = RetryEvent {
        attempt: attempts.started(),
        outcome: failure.outcome(),
        delay,
        hint,
    };
    config.notify.notify(&event);
    keep(last, failure);
    Ok(delay)
}

/// Keeps what the deadline's end answers with: the latest value, if an attempt got one (a
/// value is never thrown away for a later error or timeout), else the latest failure.
fn keep<T, E>(last: &mut Option<Failure<T, E>>, failure: Failure<T, E>) {
    if matches!(failure, Failure::Value(_)) || !matches!(last, Some(Failure::Value(_))) {
        *last = Some(failure);
    }
}

/// Arms the attempt's timer; out of line so a retry without timeouts keeps a small `poll`.
#[inline(never)]
fn arm<R: Clock>(mut slot: Pin<&mut Option<R::Sleep>>, rt: &R, at: Instant) {
    slot.set(Some(rt.sleep_until(at)));
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl<Op, Fut, R: Clock, C, N, T, E> std::fmt::Debug for RetryFuture<Op, Fut, R, C, N, T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryFuture")
            .field("attempts", &self.attempts.started())
            .finish_non_exhaustive()
    }
}
