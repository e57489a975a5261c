//! A call's attempts: each a request, copied or the original, to a clone of the service,
//! which is polled ready first.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::pipeline::Operation;
use crate::tower::CloneRequest;

/// The pipeline's operation for one request.
pub(super) struct Attempts<S, Req, Q> {
    service: S,
    /// The request, until an attempt that no retry could follow (or that could not copy it)
    /// sends it.
    request: Option<Req>,
    clones: Q,
}

impl<S, Req, Q> Attempts<S, Req, Q> {
    pub(super) fn new(service: S, request: Req, clones: Q) -> Self {
        Self {
            service,
            request: Some(request),
            clones,
        }
    }
}

impl<S, Req, Q> Operation for Attempts<S, Req, Q>
where
    S: Service<Req> + Clone,
    Q: CloneRequest<Req>,
{
    type Attempt = Attempt<S, Req>;

    fn attempt(&mut self, retry_possible: impl FnOnce() -> bool) -> Attempt<S, Req> {
        // A copy only for an attempt a retry could follow: the last possible one sends the
        // request itself, as does one whose request cannot be copied (and so is the last).
        let copy = match &self.request {
            Some(request) if retry_possible() => self.clones.clone_request(request),
            _ => None,
        };
        let Some(request) = copy.or_else(|| self.request.take()) else {
            unreachable!("the engine starts no attempt once `repeatable` said no")
        };
        Attempt {
            service: self.service.clone(),
            state: State::Readying {
                request: Some(request),
            },
        }
    }

    fn repeatable(&self) -> bool {
        self.request.is_some()
    }
}

pin_project! {
    /// One attempt: the service polled ready, then called. A readiness error is the
    /// attempt's error.
    pub(super) struct Attempt<S: Service<Req>, Req> {
        service: S,
        #[pin]
        state: State<S::Future, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Req> {
        Readying { request: Option<Req> },
        Calling { #[pin] call: F },
    }
}

impl<S: Service<Req>, Req> Future for Attempt<S, Req> {
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Readying { request } => {
                    ready!(this.service.poll_ready(cx))?;
                    let Some(request) = request.take() else {
                        unreachable!("an attempt calls its service once")
                    };
                    let call = this.service.call(request);
                    this.state.set(State::Calling { call });
                }
                StateProj::Calling { call } => return call.poll(cx),
            }
        }
    }
}
