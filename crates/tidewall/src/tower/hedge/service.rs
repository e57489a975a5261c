//! The service: each call is a hedged call whose attempts are requests to clones of the
//! service.

use std::task::{Context, Poll};

use tower_service::Service;

use super::ResponseFuture;
use super::future::Attempts;
use crate::classify::{Classify, DefaultClassifier};
use crate::hedge::{Hedge, Idempotent};
use crate::rt::{Clock, DefaultRuntime};
use crate::tower::{ByClone, CloneRequest};

/// The service of a [`HedgeLayer`](super::HedgeLayer).
pub struct HedgeService<S, R = DefaultRuntime, K = DefaultClassifier, Q = ByClone> {
    inner: S,
    hedge: Source<R, K>,
    clones: Q,
}

/// Where a service's calls take their hedge from.
pub(super) enum Source<R, K> {
    /// One hedge, for good.
    Fixed(Hedge<R, K>),
    /// The one a configuration's handle has in force when the call starts.
    #[cfg(feature = "serde")]
    Live(crate::config::LiveHedge<R, K>),
}

impl<R: Clock, K: Clone> Source<R, K> {
    /// The hedge a call starting now uses.
    #[inline]
    pub(super) fn current(&self) -> Hedge<R, K> {
        match self {
            Self::Fixed(hedge) => hedge.clone(),
            #[cfg(feature = "serde")]
            Self::Live(live) => Self::loaded(live),
        }
    }

    /// Out of line: inlined, the handle's load made the service's `call` too large for the
    /// compiler to build the call's future in place, and every call of a fixed hedge paid a
    /// copy of it (measured: 30-40 ns of 110).
    #[cfg(feature = "serde")]
    #[inline(never)]
    fn loaded(live: &crate::config::LiveHedge<R, K>) -> Hedge<R, K> {
        live.judged()
    }
}

impl<R: Clock, K: Clone> Clone for Source<R, K> {
    fn clone(&self) -> Self {
        match self {
            Self::Fixed(hedge) => Self::Fixed(hedge.clone()),
            #[cfg(feature = "serde")]
            Self::Live(live) => Self::Live(live.clone()),
        }
    }
}

impl<R: Clock, K> std::fmt::Debug for Source<R, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(hedge) => hedge.fmt(f),
            #[cfg(feature = "serde")]
            Self::Live(live) => live.fmt(f),
        }
    }
}

impl<S, R, K, Q> HedgeService<S, R, K, Q> {
    pub(super) fn new(inner: S, hedge: Source<R, K>, clones: Q) -> Self {
        Self {
            inner,
            hedge,
            clones,
        }
    }

    inner_service_accessors!("");
}

impl<S, Req, R, K, Q> Service<Req> for HedgeService<S, R, K, Q>
where
    S: Service<Req> + Clone,
    Q: CloneRequest<Req> + Clone,
    R: Clock,
    K: Classify<S::Response, S::Error> + Clone + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, R, K, Q>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The service polled ready makes the primary attempt (its readiness — a rate-limit
        // cell, a bulkhead slot — is used, not wasted); hedges use fresh clones, each polled
        // ready first.
        let template = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, template.clone());
        let attempts = Attempts::new(ready, template, req, self.clones.clone());
        ResponseFuture::new(self.hedge.current().into_call(Idempotent(attempts)))
    }
}

impl<S: Clone, R: Clock, K: Clone, Q: Clone> Clone for HedgeService<S, R, K, Q> {
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), self.hedge.clone(), self.clones.clone())
    }
}

impl<S, R: Clock, K, Q> std::fmt::Debug for HedgeService<S, R, K, Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HedgeService")
            .field("hedge", &self.hedge)
            .finish_non_exhaustive()
    }
}
