//! The hedged call: the primary attempt, plus hedges launched after the delay.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;

use super::{Hedge, Idempotent, MakeAttempt};
use crate::breaker::Outcome;
use crate::classify::{Classify, Verdict};
use crate::retry::engine::Attempts;
use crate::rt::{Clock, instant_after};

pin_project! {
    /// The future of [`Hedge::call`]: resolves with the first success, with the first
    /// result judged neither a success nor a retryable failure, or with the last failure once
    /// every attempt failed and no hedge is left. The attempts still running are dropped as
    /// it resolves.
    ///
    /// **Telemetry:** each call that resolves counts once in
    /// `tidewall_calls_total{policy="hedge", name, outcome}` by the classifier's verdict on
    /// its answer (`success`; `failure`, a retryable one when every attempt failed included;
    /// `ignored`), and tells the listener
    /// [`Succeeded`](crate::telemetry::EventKind::Succeeded),
    /// [`Failed`](crate::telemetry::EventKind::Failed) or
    /// [`Ignored`](crate::telemetry::EventKind::Ignored) after its hedges' events.
    ///
    /// **Cancel safety:** dropping it drops every attempt still running; a call dropped
    /// before it resolved counts nothing.
    #[must_use = "futures do nothing unless polled"]
    pub struct HedgeFuture<'h, F: MakeAttempt, R: Clock, K> {
        hedge: HedgeRef<'h, R, K>,
        op: F,
        #[pin]
        primary: Option<F::Attempt>,
        primary_started: Option<Instant>,
        // Hedges are boxed: only calls that actually hedge allocate.
        hedges: Vec<(Pin<Box<F::Attempt>>, Instant)>,
        // This call's progress through the retry engine's rules.
        attempts: Attempts,
        // The last retryable failure, returned if nothing better arrives.
        last_failure: Option<<F::Attempt as Future>::Output>,
        // The wait for the next hedge; none once no hedge is left.
        #[pin]
        timer: Option<R::Sleep>,
        // A hedge the budget refused while attempts were running: asked for once more when
        // every one of them has failed.
        refused: bool,
        // No hedge starts before this: the wait a retryable failure asked for (its hint).
        not_before: Option<Instant>,
        // Whether `timer` is the wait for `not_before` (not the hedge delay).
        waiting_out_hint: bool,
    }
}

/// The policy a hedged call runs under: borrowed by [`Hedge::call`], owned by tower's.
pub(crate) enum HedgeRef<'h, R, K> {
    Borrowed(&'h Hedge<R, K>),
    #[cfg_attr(
        not(any(feature = "tower", feature = "serde")),
        allow(dead_code, reason = "built by tower and by a registry's live hedge")
    )]
    Owned(Hedge<R, K>),
}

impl<R, K> std::ops::Deref for HedgeRef<'_, R, K> {
    type Target = Hedge<R, K>;

    fn deref(&self) -> &Hedge<R, K> {
        match self {
            Self::Borrowed(hedge) => hedge,
            Self::Owned(hedge) => hedge,
        }
    }
}

impl<'h, F: MakeAttempt, R: Clock, K> HedgeFuture<'h, F, R, K> {
    pub(super) fn new(hedge: HedgeRef<'h, R, K>, op: Idempotent<F>) -> Self {
        Self {
            hedge,
            op: op.0,
            primary: None,
            primary_started: None,
            hedges: Vec::new(),
            attempts: Attempts::default(),
            last_failure: None,
            timer: None,
            refused: false,
            not_before: None,
            waiting_out_hint: false,
        }
    }
}

impl<F, T, E, R, K> Future for HedgeFuture<'_, F, R, K>
where
    F: MakeAttempt<Attempt: Future<Output = Result<T, E>>>,
    R: Clock,
    K: Classify<T, E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let hedge: &Hedge<R, K> = this.hedge;
        let inner = &*hedge.inner;
        let rules = &inner.rules;
        // Sets the wait for the next hedge, if the rules leave one and the operation can
        // make it.
        let schedule_next =
            |attempts: &Attempts, repeatable: bool, mut timer: Pin<&mut Option<R::Sleep>>| {
                if repeatable && rules.attempt_left(attempts) {
                    timer.set(Some(inner.rt.sleep(hedge.delay())));
                }
            };
        // A retryable failure's hint: no hedge starts before it ends (capped as a retry's).
        let note_hint = |not_before: &mut Option<Instant>, result: &Result<T, E>| {
            if let Some(hint) = hedge.classify.retry_after(result.as_ref()) {
                let until = instant_after(inner.rt.now(), hint.min(rules.max_retry_after));
                *not_before = Some(not_before.map_or(until, |at| at.max(until)));
            }
        };
        if this.primary_started.is_none() {
            let now = inner.rt.now();
            rules.begin(this.attempts, || now);
            this.primary.set(Some(this.op.make_attempt()));
            *this.primary_started = Some(now);
            schedule_next(this.attempts, this.op.repeatable(), this.timer.as_mut());
        }
        let (output, outcome) = 'answered: loop {
            if let Some(primary) = this.primary.as_mut().as_pin_mut()
                && let Poll::Ready(result) = primary.poll(cx)
            {
                this.primary.set(None);
                match hedge.classify.classify(result.as_ref()) {
                    Verdict::Success => {
                        if let (Some(estimator), Some(started)) =
                            (&inner.estimator, *this.primary_started)
                        {
                            estimator.record(inner.rt.now().saturating_duration_since(started));
                        }
                        break 'answered (result, Outcome::Success);
                    }
                    Verdict::RetryableFailure => {
                        note_hint(this.not_before, &result);
                        *this.last_failure = Some(result);
                    }
                    Verdict::Failure => break 'answered (result, Outcome::Failure),
                    Verdict::Ignored => break 'answered (result, Outcome::Ignored),
                }
            }
            let mut i = 0;
            while i < this.hedges.len() {
                let (attempt, started) = &mut this.hedges[i];
                let Poll::Ready(result) = attempt.as_mut().poll(cx) else {
                    i += 1;
                    continue;
                };
                match hedge.classify.classify(result.as_ref()) {
                    Verdict::Success => {
                        if let Some(estimator) = &inner.estimator {
                            let now = inner.rt.now();
                            estimator.record(now.saturating_duration_since(*started));
                            // The primary lost: its latency is at least what it has run so
                            // far. Recording that lower bound keeps the percentile from
                            // drifting down to the hedges' (faster) latencies alone.
                            if this.primary.is_some()
                                && let Some(primary_started) = *this.primary_started
                            {
                                estimator.record(now.saturating_duration_since(primary_started));
                            }
                        }
                        break 'answered (result, Outcome::Success);
                    }
                    Verdict::RetryableFailure => {
                        note_hint(this.not_before, &result);
                        *this.last_failure = Some(result);
                        drop(this.hedges.swap_remove(i));
                    }
                    Verdict::Failure => break 'answered (result, Outcome::Failure),
                    Verdict::Ignored => break 'answered (result, Outcome::Ignored),
                }
            }
            let running = this.primary.is_some() || !this.hedges.is_empty();
            if (this.timer.is_some() || *this.refused) && !this.op.repeatable() {
                // The operation stopped being repeatable after the next hedge was planned:
                // nothing more can be launched, so nothing is waited for (a hint included).
                this.timer.set(None);
                *this.waiting_out_hint = false;
                *this.refused = false;
            }
            // The next hedge is due when its wait is over, or at once when every attempt
            // failed (a hedge the budget refused included); it starts if the budget pays.
            let due = match this.timer.as_mut().as_pin_mut() {
                Some(timer) if *this.waiting_out_hint => timer.poll(cx).is_ready(),
                Some(timer) => !running || timer.poll(cx).is_ready(),
                None => !running && *this.refused,
            };
            if due {
                this.timer.set(None);
                *this.waiting_out_hint = false;
                let now = inner.rt.now();
                if let Some(until) = *this.not_before
                    && until > now
                {
                    // Due, but a failure asked for a wait that has not ended: wait it out.
                    this.timer.set(Some(inner.rt.sleep_until(until)));
                    *this.waiting_out_hint = true;
                    continue;
                }
                *this.refused = false;
                if rules.launch(this.attempts, || now) {
                    inner
                        .telemetry
                        .hedge_launched(this.attempts.started().saturating_sub(1));
                    this.hedges.push((Box::pin(this.op.make_attempt()), now));
                    schedule_next(this.attempts, this.op.repeatable(), this.timer.as_mut());
                    continue;
                }
                if rules.attempt_left(this.attempts) {
                    inner.telemetry.budget_spent();
                }
                // Refused while attempts run: asked for once more if they all fail. Refused
                // with none running: the call ends with the last failure.
                *this.refused = running;
            }
            if running || this.timer.is_some() {
                return Poll::Pending;
            }
            let failure = this
                .last_failure
                .take()
                .unwrap_or_else(unreachable_no_attempt);
            break 'answered (failure, Outcome::Failure);
        };
        // The call is answered: the losers are dropped now, not when this future is.
        this.primary.set(None);
        this.hedges.clear();
        this.timer.set(None);
        inner.telemetry.outcome(outcome, None);
        Poll::Ready(output)
    }
}

#[cold]
fn unreachable_no_attempt<T>() -> T {
    // Every path that ends here ran at least one attempt and stored its failure.
    unreachable!("a hedged call ended without any attempt")
}
