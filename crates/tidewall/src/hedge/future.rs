//! The hedged call: the primary attempt, plus hedges launched after the delay.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;

use super::{Hedge, Idempotent};
use crate::rt::Runtime;

pin_project! {
    /// The future of [`Hedge::call`]: resolves with the first success, or with the last
    /// error once every attempt failed and no hedge is left.
    ///
    /// **Cancel safety:** dropping it drops every attempt still running.
    #[must_use = "futures do nothing unless polled"]
    pub struct HedgeFuture<'h, F, Fut: Future, R: Runtime> {
        hedge: &'h Hedge<R>,
        op: F,
        #[pin]
        primary: Option<Fut>,
        primary_started: Option<Instant>,
        // Hedges are boxed: only calls that actually hedge allocate.
        hedges: Vec<(Pin<Box<Fut>>, Instant)>,
        launched: u32,
        last_error: Option<<Fut as Future>::Output>,
        #[pin]
        timer: Option<R::Sleep>,
        hedges_left: bool,
    }
}

impl<'h, F, Fut: Future, R: Runtime> HedgeFuture<'h, F, Fut, R> {
    pub(super) fn new(hedge: &'h Hedge<R>, op: Idempotent<F>) -> Self {
        Self {
            hedge,
            op: op.0,
            primary: None,
            primary_started: None,
            hedges: Vec::new(),
            launched: 0,
            last_error: None,
            timer: None,
            hedges_left: true,
        }
    }
}

impl<F, Fut, T, E, R> Future for HedgeFuture<'_, F, Fut, R>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    R: Runtime,
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
                match result {
                    Ok(value) => {
                        if let Some(started) = *this.primary_started {
                            inner
                                .estimator
                                .record(inner.rt.now().saturating_duration_since(started));
                        }
                        return Poll::Ready(Ok(value));
                    }
                    Err(error) => *this.last_error = Some(Err(error)),
                }
            }
            let mut i = 0;
            while i < this.hedges.len() {
                let (attempt, started) = &mut this.hedges[i];
                match attempt.as_mut().poll(cx) {
                    Poll::Ready(Ok(value)) => {
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
                        return Poll::Ready(Ok(value));
                    }
                    Poll::Ready(Err(error)) => {
                        *this.last_error = Some(Err(error));
                        drop(this.hedges.swap_remove(i));
                    }
                    Poll::Pending => i += 1,
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
                this.last_error
                    .take()
                    .unwrap_or_else(unreachable_no_attempt),
            );
        }
    }
}

#[cold]
fn unreachable_no_attempt<T>() -> T {
    // Every path that ends here ran at least one attempt and stored its error.
    unreachable!("a hedged call ended without any attempt")
}
