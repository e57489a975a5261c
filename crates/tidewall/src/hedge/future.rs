//! The hedged call: the primary attempt, plus hedges launched after the delay.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;

use super::{Hedge, Idempotent};
use crate::classify::{Classify, Verdict};
use crate::rt::Clock;

pin_project! {
    /// The future of [`Hedge::call`]: resolves with the first success, with the first
    /// result judged neither a success nor a retryable failure, or with the last failure once
    /// every attempt failed and no hedge is left.
    ///
    /// **Cancel safety:** dropping it drops every attempt still running.
    #[must_use = "futures do nothing unless polled"]
    pub struct HedgeFuture<'h, F, Fut: Future, R: Clock, K> {
        hedge: &'h Hedge<R, K>,
        op: F,
        #[pin]
        primary: Option<Fut>,
        primary_started: Option<Instant>,
        // Hedges are boxed: only calls that actually hedge allocate.
        hedges: Vec<(Pin<Box<Fut>>, Instant)>,
        launched: u32,
        // The last retryable failure, returned if nothing better arrives.
        last_failure: Option<<Fut as Future>::Output>,
        #[pin]
        timer: Option<R::Sleep>,
        hedges_left: bool,
    }
}

impl<'h, F, Fut: Future, R: Clock, K> HedgeFuture<'h, F, Fut, R, K> {
    pub(super) fn new(hedge: &'h Hedge<R, K>, op: Idempotent<F>) -> Self {
        Self {
            hedge,
            op: op.0,
            primary: None,
            primary_started: None,
            hedges: Vec::new(),
            launched: 0,
            last_failure: None,
            timer: None,
            hedges_left: true,
        }
    }
}

impl<F, Fut, T, E, R, K> Future for HedgeFuture<'_, F, Fut, R, K>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Clock,
    K: Classify<T, E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let hedge = *this.hedge;
        let inner = &*hedge.inner;
        if this.primary_started.is_none() {
            let now = inner.rt.now();
            if let Some(budget) = &inner.budget {
                budget.deposit(now);
            }
            this.primary.set(Some((this.op)()));
            *this.primary_started = Some(now);
            *this.hedges_left = inner.max_hedges > 0;
            if *this.hedges_left {
                this.timer.set(Some(inner.rt.sleep(hedge.delay())));
            }
        }
        loop {
            if let Some(primary) = this.primary.as_mut().as_pin_mut()
                && let Poll::Ready(result) = primary.poll(cx)
            {
                this.primary.set(None);
                match hedge.classify.classify(result.as_ref()) {
                    Verdict::Success => {
                        if let Some(started) = *this.primary_started {
                            inner
                                .estimator
                                .record(inner.rt.now().saturating_duration_since(started));
                        }
                        return Poll::Ready(result);
                    }
                    Verdict::RetryableFailure => *this.last_failure = Some(result),
                    Verdict::Failure | Verdict::Ignored => return Poll::Ready(result),
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
                        let now = inner.rt.now();
                        inner
                            .estimator
                            .record(now.saturating_duration_since(*started));
                        // The primary lost: its latency is at least what it has run so far.
                        // Recording that lower bound keeps the percentile from drifting down
                        // to the hedges' (faster) latencies alone.
                        if this.primary.is_some()
                            && let Some(primary_started) = *this.primary_started
                        {
                            inner
                                .estimator
                                .record(now.saturating_duration_since(primary_started));
                        }
                        return Poll::Ready(result);
                    }
                    Verdict::RetryableFailure => {
                        *this.last_failure = Some(result);
                        drop(this.hedges.swap_remove(i));
                    }
                    Verdict::Failure | Verdict::Ignored => return Poll::Ready(result),
                }
            }
            let running = this.primary.is_some() || !this.hedges.is_empty();
            // Launch a hedge when the delay has passed, or at once when every attempt failed.
            let due = match this.timer.as_mut().as_pin_mut() {
                Some(timer) => timer.poll(cx).is_ready(),
                None => false,
            } || (!running && *this.hedges_left);
            if due {
                this.timer.set(None);
                if *this.launched < inner.max_hedges && hedge.budget_allows() {
                    *this.launched += 1;
                    let now = inner.rt.now();
                    this.hedges.push((Box::pin((this.op)()), now));
                    if *this.launched < inner.max_hedges {
                        this.timer.set(Some(inner.rt.sleep(hedge.delay())));
                    }
                    continue;
                }
                *this.hedges_left = false;
            }
            if running || this.timer.is_some() {
                return Poll::Pending;
            }
            return Poll::Ready(
                this.last_failure
                    .take()
                    .unwrap_or_else(unreachable_no_attempt),
            );
        }
    }
}

#[cold]
fn unreachable_no_attempt<T>() -> T {
    // Every path that ends here ran at least one attempt and stored its failure.
    unreachable!("a hedged call ended without any attempt")
}
