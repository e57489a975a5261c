//! Bulkhead as a tower layer: reject when full, or wait (bounded) in `poll_ready`.

use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::{BoxFuture, SyncSlot};
use crate::bulkhead::{Bulkhead, OwnedPermit};
use crate::rt::Clock;
use crate::{Deadline, Error, Rejected};

/// A pending `acquire_owned`, kept across `poll_ready` calls.
type Acquiring<R> = BoxFuture<Result<OwnedPermit<R>, Rejected>>;

/// Caps concurrent calls with a [`Bulkhead`].
#[derive(Debug, Clone)]
pub struct BulkheadLayer<R: Clock> {
    bulkhead: Bulkhead<R>,
    wait: bool,
}

impl<R: Clock> BulkheadLayer<R> {
    /// When full, `call` fails at once with [`Rejected::BulkheadFull`] (load shedding).
    pub fn reject(bulkhead: Bulkhead<R>) -> Self {
        Self {
            bulkhead,
            wait: false,
        }
    }

    /// When full, `poll_ready` waits in the bulkhead's FIFO queue, up to its `max_wait`, then
    /// fails with [`Rejected::BulkheadFull`].
    pub fn wait(bulkhead: Bulkhead<R>) -> Self {
        Self {
            bulkhead,
            wait: true,
        }
    }
}

impl<S, R: Clock> Layer<S> for BulkheadLayer<R> {
    type Service = BulkheadService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService {
            inner,
            bulkhead: self.bulkhead.clone(),
            wait: self.wait,
            permit: None,
            acquiring: SyncSlot::empty(),
        }
    }
}

/// The service of a [`BulkheadLayer`]. A clone starts without a reserved slot.
pub struct BulkheadService<S, R: Clock> {
    inner: S,
    bulkhead: Bulkhead<R>,
    wait: bool,
    permit: Option<OwnedPermit<R>>,
    acquiring: SyncSlot<Acquiring<R>>,
}

impl<S: Clone, R: Clock> Clone for BulkheadService<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            bulkhead: self.bulkhead.clone(),
            wait: self.wait,
            permit: None,
            acquiring: SyncSlot::empty(),
        }
    }
}

impl<S, R: Clock> std::fmt::Debug for BulkheadService<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkheadService")
            .field("bulkhead", &self.bulkhead)
            .field("reserved", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, Req, R> Service<Req> for BulkheadService<S, R>
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
        if self.wait && self.permit.is_none() {
            let bulkhead = &self.bulkhead;
            let slot = self.acquiring.get_mut();
            let acquiring =
                slot.get_or_insert_with(|| Box::pin(bulkhead.acquire_owned(Deadline::none())));
            match acquiring.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => {
                    *slot = None;
                    match result {
                        Ok(permit) => self.permit = Some(permit),
                        Err(rejected) => return Poll::Ready(Err(Error::Rejected(rejected))),
                    }
                }
            }
        }
        self.inner.poll_ready(cx).map_err(Error::Inner)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit = match self.permit.take() {
            Some(permit) => permit,
            None => match self.bulkhead.try_acquire_owned() {
                Ok(permit) => permit,
                Err(rejected) => {
                    return Box::pin(std::future::ready(Err(Error::Rejected(rejected))));
                }
            },
        };
        let future = self.inner.call(req);
        Box::pin(async move {
            let result = future.await.map_err(Error::Inner);
            drop(permit);
            result
        })
    }
}
