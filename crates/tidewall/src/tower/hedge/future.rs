//! The response future: a hedged call whose attempts are requests to the service.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::classify::Classify;
use crate::hedge::{HedgeFuture, MakeAttempt};
use crate::rt::Clock;
use crate::tower::attempt::Attempt;
use crate::tower::clones::next_request;
use crate::tower::{ByClone, CloneRequest};

pin_project! {
    /// The response future of a [`HedgeService`](super::HedgeService): a
    /// [`HedgeFuture`] whose primary attempt goes to the service polled ready and each hedge
    /// to a clone of it, polled ready first.
    ///
    /// **Cancel safety:** dropping it drops every attempt still running.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, Req, R, K, Q = ByClone>
    where
        S: Service<Req>,
        S: Clone,
        Q: CloneRequest<Req>,
        R: Clock,
        K: 'static,
    {
        #[pin]
        hedged: HedgeFuture<'static, Attempts<S, Req, Q>, R, K>,
    }
}

impl<S, Req, R, K, Q> ResponseFuture<S, Req, R, K, Q>
where
    S: Service<Req> + Clone,
    Q: CloneRequest<Req>,
    R: Clock,
    K: 'static,
{
    pub(super) fn new(hedged: HedgeFuture<'static, Attempts<S, Req, Q>, R, K>) -> Self {
        Self { hedged }
    }
}

impl<S, Req, R, K, Q> Future for ResponseFuture<S, Req, R, K, Q>
where
    S: Service<Req> + Clone,
    Q: CloneRequest<Req>,
    R: Clock,
    K: Classify<S::Response, S::Error> + 'static,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().hedged.poll(cx)
    }
}

impl<S, Req, R, K, Q> std::fmt::Debug for ResponseFuture<S, Req, R, K, Q>
where
    S: Service<Req> + Clone,
    Q: CloneRequest<Req>,
    R: Clock,
    K: 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// The attempts of one hedged request: the first on the service polled ready, each later
/// one on a fresh clone of the service; each sends a copy of the request, or the request
/// itself when it cannot be copied (and then no hedge follows).
pub(super) struct Attempts<S, Req, Q> {
    ready: Option<S>,
    template: S,
    req: Option<Req>,
    clones: Q,
}

impl<S, Req, Q> Attempts<S, Req, Q> {
    pub(super) fn new(ready: S, template: S, req: Req, clones: Q) -> Self {
        Self {
            ready: Some(ready),
            template,
            req: Some(req),
            clones,
        }
    }
}

impl<S: Service<Req> + Clone, Req, Q: CloneRequest<Req>> MakeAttempt for Attempts<S, Req, Q> {
    type Attempt = Attempt<S, Req>;

    fn make_attempt(&mut self) -> Attempt<S, Req> {
        // Every attempt asks: the hedge does not tell which is its last.
        let Some(req) = next_request(&self.clones, &mut self.req, || true) else {
            unreachable!("the hedge starts no attempt once `repeatable` said no")
        };
        match self.ready.take() {
            Some(mut ready) => Attempt::Calling {
                call: ready.call(req),
            },
            None => Attempt::Readying {
                service: self.template.clone(),
                req: Some(req),
            },
        }
    }

    fn repeatable(&self) -> bool {
        self.req.is_some()
    }
}
