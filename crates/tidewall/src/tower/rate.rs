//! Rate limiter as a tower layer; clones share the limit.

use std::pin::Pin;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::{BoxFuture, SyncSlot};
use crate::rate::RateLimiter;
use crate::rt::Clock;
use crate::{Error, Rejected};

/// Limits the call rate with a shared GCRA [`RateLimiter`].
#[derive(Debug, Clone)]
pub struct RateLimitLayer<R: Clock> {
    limiter: RateLimiter<R>,
    wait: bool,
}

impl<R: Clock> RateLimitLayer<R> {
    /// Over the limit, `call` fails at once with [`Rejected::RateLimited`] and its
    /// `retry_after` (map it to HTTP 429 + `Retry-After`).
    pub fn reject(limiter: RateLimiter<R>) -> Self {
        Self {
            limiter,
            wait: false,
        }
    }

    /// Over the limit, `poll_ready` sleeps until the limiter admits (backpressure).
    pub fn wait(limiter: RateLimiter<R>) -> Self {
        Self {
            limiter,
            wait: true,
        }
    }
}

impl<S, R: Clock> Layer<S> for RateLimitLayer<R> {
    type Service = RateLimitService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limiter: self.limiter.clone(),
            wait: self.wait,
            admitted: false,
            sleep: SyncSlot::empty(),
        }
    }
}

/// The service of a [`RateLimitLayer`]. `Clone`: every clone draws from the same limit.
pub struct RateLimitService<S, R: Clock> {
    inner: S,
    limiter: RateLimiter<R>,
    wait: bool,
    admitted: bool,
    sleep: SyncSlot<Pin<Box<R::Sleep>>>,
}

impl<S: Clone, R: Clock> Clone for RateLimitService<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            wait: self.wait,
            admitted: false,
            sleep: SyncSlot::empty(),
        }
    }
}

impl<S, R: Clock> std::fmt::Debug for RateLimitService<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimitService")
            .field("limiter", &self.limiter)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl<S, Req, R> Service<Req> for RateLimitService<S, R>
where
    S: Service<Req>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    R: Clock,
{
    type Response = S::Response;
    type Error = Error<S::Error>;
    type Future = BoxFuture<Result<S::Response, Error<S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let sleep = self.sleep.get_mut();
        while self.wait && !self.admitted {
            if let Some(pending) = sleep.as_mut() {
                if pending.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *sleep = None;
            }
            match self.limiter.check() {
                Ok(()) => self.admitted = true,
                Err(Rejected::RateLimited { retry_after }) => {
                    *sleep = Some(Box::pin(self.limiter.runtime().sleep(retry_after)));
                }
                Err(other) => return Poll::Ready(Err(Error::Rejected(other))),
            }
        }
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let admitted = std::mem::take(&mut self.admitted);
        if !admitted && let Err(rejected) = self.limiter.check() {
            return Box::pin(std::future::ready(Err(Error::Rejected(rejected))));
        }
        let future = self.inner.call(req);
        Box::pin(async move { future.await.map_err(Error::Inner) })
    }
}
