//! The retry state machine.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use tidewall_core::backoff::DelayState;

use super::RetryError;
use super::builder::{Retry, Settings};
use super::hooks::{ErrorPredicate, HintSource, Notify, OkPredicate, Outcome, RetryEvent};
use crate::rt::{Runtime, instant_after};

/// What a failed attempt left behind; kept until the next attempt replaces it.
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

    /// The result when no retry is left.
    fn exhausted(self) -> Result<T, RetryError<E>> {
        match self {
            Self::Value(v) => Ok(v),
            Self::Error(e) => Err(RetryError::Inner(e)),
            Self::TimedOut => Err(RetryError::AttemptTimedOut),
        }
    }
}

/// The result when the deadline ends the operation: a retryable value is still a value.
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
    pub struct RetryFuture<Op, Fut, R: Runtime, W, V, N, H, T, E> {
        // The configuration moves in whole, with no field-by-field rebuild.
        config: Retry<Op, R, W, V, N, H>,
        attempts: u32,
        // Created on the first failure, so the success path never seeds a generator.
        delays: Option<DelayState>,
        last: Option<Failure<T, E>>,
        #[pin]
        state: State<Fut>,
        // One timer slot serves both the attempt's timeout/deadline and the backoff sleep:
        // they are never needed at the same time, and a runtime's sleep can be large.
        #[pin]
        timer: Option<R::Sleep>,
    }
}

impl<Op, Fut, R: Runtime, W, V, N, H, T, E> RetryFuture<Op, Fut, R, W, V, N, H, T, E> {
    pub(super) fn new(retry: Retry<Op, R, W, V, N, H>) -> Self {
        Self {
            config: retry,
            attempts: 0,
            delays: None,
            last: None,
            state: State::Idle,
            timer: None,
        }
    }
}

impl<Op, Fut, R, W, V, N, H, T, E> Future for RetryFuture<Op, Fut, R, W, V, N, H, T, E>
where
    Op: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Runtime,
    W: ErrorPredicate<E>,
    V: OkPredicate<T>,
    N: Notify<T, E>,
    H: HintSource<E>,
{
    type Output = Result<T, RetryError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let config = this.config;
        let settings: &Settings = &config.settings;
        loop {
            let failure = match this.state.as_mut().project() {
                StateProj::Idle => {
                    // The clock is read only when a timeout or deadline needs it.
                    let timer_at = if settings.deadline.instant().is_some()
                        || settings.attempt_timeout.is_some()
                    {
                        let now = config.rt.now();
                        if !settings.deadline.allows(now, settings.min_attempt_time) {
                            return Poll::Ready(deadline_exceeded(
                                this.last.take(),
                                *this.attempts,
                            ));
                        }
                        earliest(
                            settings.attempt_timeout.map(|t| instant_after(now, t)),
                            settings.deadline.instant(),
                        )
                    } else {
                        None
                    };
                    if *this.attempts == 0
                        && let Some(budget) = &settings.budget
                    {
                        budget.deposit(config.rt.now());
                    }
                    *this.attempts += 1;
                    let future = (config.op)();
                    this.timer.set(timer_at.map(|at| config.rt.sleep_until(at)));
                    this.state.set(State::Attempt { future });
                    continue;
                }
                StateProj::Sleeping => {
                    if let Some(sleep) = this.timer.as_mut().as_pin_mut() {
                        ready!(sleep.poll(cx));
                    }
                    this.state.set(State::Idle);
                    continue;
                }
                StateProj::Attempt { future } => match future.poll(cx) {
                    Poll::Ready(Ok(value)) if config.when_ok.is_retryable(&value) => {
                        Failure::Value(value)
                    }
                    Poll::Ready(Ok(value)) => return Poll::Ready(Ok(value)),
                    Poll::Ready(Err(error)) if config.when.is_retryable(&error) => {
                        Failure::Error(error)
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(RetryError::Inner(error))),
                    Poll::Pending => {
                        let Some(timer) = this.timer.as_mut().as_pin_mut() else {
                            return Poll::Pending;
                        };
                        ready!(timer.poll(cx));
                        if settings.deadline.is_expired(config.rt.now()) {
                            this.state.set(State::Idle);
                            return Poll::Ready(deadline_exceeded(
                                this.last.take(),
                                *this.attempts,
                            ));
                        }
                        Failure::TimedOut
                    }
                },
            };
            this.state.set(State::Idle);
            this.timer.set(None);

            let hint = match &failure {
                Failure::Error(error) => config.hints.hint(error),
                _ => None,
            };
            let backoff = &settings.backoff;
            let delays = this.delays.get_or_insert_with(|| {
                backoff.start(settings.seed.unwrap_or_else(crate::seed::fresh_seed))
            });
            let Some(scheduled) = backoff.next_delay(delays) else {
                return Poll::Ready(failure.exhausted());
            };
            let delay = hint.map_or(scheduled, |hint| {
                scheduled.max(hint.min(settings.max_retry_after))
            });
            if settings.deadline.instant().is_some()
                && !settings.deadline.allows(
                    config.rt.now(),
                    delay.saturating_add(settings.min_attempt_time),
                )
            {
                // The sleep would end too late for another attempt: do not sleep at all.
                return Poll::Ready(deadline_exceeded(Some(failure), *this.attempts));
            }
            // Only a retry that will really be attempted takes from the budget.
            if let Some(budget) = &settings.budget
                && !budget.try_withdraw(config.rt.now())
            {
                return Poll::Ready(failure.exhausted());
            }
            let event = RetryEvent {
                attempt: *this.attempts,
                outcome: failure.outcome(),
                delay,
                hint,
            };
            config.notify.notify(&event);
            *this.last = Some(failure);
            if !delay.is_zero() {
                this.timer.set(Some(config.rt.sleep(delay)));
                this.state.set(State::Sleeping);
            }
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl<Op, Fut, R: Runtime, W, V, N, H, T, E> std::fmt::Debug
    for RetryFuture<Op, Fut, R, W, V, N, H, T, E>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryFuture")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}
