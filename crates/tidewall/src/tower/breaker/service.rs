//! The service: admits through the breaker in `call`, or waits for it in `poll_ready`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tower_service::Service;

use super::ResponseFuture;
use crate::Rejected;
use crate::breaker::{CircuitBreaker, OwnedPermit};
use crate::classify::{Classify, DefaultClassifier};
use crate::rt::{Clock, instant_after};
use crate::tower::{PolicyError, SyncSlot};

/// The service of a [`BreakerLayer`](super::BreakerLayer). A clone shares the breaker and
/// starts holding no permit.
///
/// Bounded on [`Clock`] because it keeps the breaker's permit between `poll_ready` and
/// `call`.
pub struct BreakerService<S, R: Clock, C = DefaultClassifier> {
    inner: S,
    breaker: CircuitBreaker<R>,
    classify: C,
    wait: Option<Option<Duration>>,
    waiting: SyncSlot<Waiting<R>>,
}

/// What a caller waiting in `poll_ready` has reached.
struct Waiting<R: Clock> {
    since: Option<Instant>,
    timer: Option<Pin<Box<R::Sleep>>>,
    permit: Option<OwnedPermit<R>>,
    /// The wait gave up: `poll_ready` said ready (an error there would tell tower the
    /// service is broken for good), and the next call fails with this refusal.
    refused: Option<Box<Rejected>>,
}

impl<R: Clock> Waiting<R> {
    const fn idle() -> Self {
        Self {
            since: None,
            timer: None,
            permit: None,
            refused: None,
        }
    }
}

impl<S, R: Clock, C> BreakerService<S, R, C> {
    #[inline]
    pub(super) fn new(
        inner: S,
        breaker: CircuitBreaker<R>,
        classify: C,
        wait: Option<Option<Duration>>,
    ) -> Self {
        Self {
            inner,
            breaker,
            classify,
            wait,
            waiting: SyncSlot::new(Waiting::idle()),
        }
    }

    inner_service_accessors!("; a permit taken in `poll_ready` is given back unrecorded");

    /// The breaker.
    pub fn breaker(&self) -> &CircuitBreaker<R> {
        &self.breaker
    }

    /// Waits in `poll_ready` until the breaker admits (a permit is then held) or the wait
    /// would pass `max_wait`.
    fn poll_admitted(&mut self, max_wait: Option<Duration>, cx: &mut Context<'_>) -> Poll<()> {
        let waiting = self.waiting.get_mut();
        loop {
            if waiting.permit.is_some() || waiting.refused.is_some() {
                return Poll::Ready(());
            }
            if let Some(timer) = waiting.timer.as_mut() {
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                waiting.timer = None;
            }
            let retry_after = match self.breaker.try_acquire_owned_quiet() {
                Ok(permit) => {
                    *waiting = Waiting::idle();
                    waiting.permit = Some(permit);
                    return Poll::Ready(());
                }
                Err(Rejected::CircuitOpen { retry_after }) => retry_after,
                Err(other) => {
                    self.breaker.record_rejection(&other);
                    waiting.refused = Some(Box::new(other));
                    return Poll::Ready(());
                }
            };
            let rt = self.breaker.runtime();
            let now = rt.now();
            let since = *waiting.since.get_or_insert(now);
            // A zero hint (a half-open breaker at the end of its probe wait) would spin.
            let wake = instant_after(now, retry_after.max(Duration::from_millis(1)));
            if max_wait.is_some_and(|max| wake > instant_after(since, max)) {
                *waiting = Waiting::idle();
                let refused = Rejected::CircuitOpen { retry_after };
                self.breaker.record_rejection(&refused);
                waiting.refused = Some(Box::new(refused));
                return Poll::Ready(());
            }
            waiting.timer = Some(Box::pin(rt.sleep_until(wake)));
        }
    }
}

impl<S, Req, R, C> Service<Req> for BreakerService<S, R, C>
where
    S: Service<Req>,
    S::Error: PolicyError,
    R: Clock,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, R, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Some(max_wait) = self.wait {
            std::task::ready!(self.poll_admitted(max_wait, cx));
            if self.waiting.get_mut().refused.is_some() {
                // The call fails with the refusal; the inner service is not readied for it.
                return Poll::Ready(Ok(()));
            }
        }
        self.inner.poll_ready(cx)
    }

    // Always: see `AdmitService::call` (a future returned through memory stalls on
    // store forwarding when read back).
    #[inline(always)]
    fn call(&mut self, req: Req) -> Self::Future {
        let waiting = self.waiting.get_mut();
        let admitted = match waiting.permit.take() {
            // Taken in `poll_ready`, before the inner service's own wait: timed from the call.
            Some(mut permit) => {
                permit.start_now();
                Ok(permit)
            }
            None => match waiting.refused.take() {
                Some(refused) => Err(*refused),
                None => self.breaker.try_acquire_owned(),
            },
        };
        match admitted {
            Ok(permit) => {
                ResponseFuture::calling(self.inner.call(req), permit, self.classify.clone())
            }
            Err(rejected) => ResponseFuture::rejected(rejected),
        }
    }
}

impl<S: Clone, R: Clock, C: Clone> Clone for BreakerService<S, R, C> {
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            self.breaker.clone(),
            self.classify.clone(),
            self.wait,
        )
    }
}

impl<S, R: Clock, C> std::fmt::Debug for BreakerService<S, R, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BreakerService")
            .field("breaker", &self.breaker)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}
