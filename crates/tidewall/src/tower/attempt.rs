//! One attempt of a retrying or hedging layer: a service polled ready, then called.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

pin_project! {
    /// One attempt: readying a clone of the service, then the call (or the call at once, on
    /// a service already polled ready). A readiness error is the attempt's error.
    #[project = AttemptProj]
    pub(crate) enum Attempt<S, Req>
    where
        S: Service<Req>,
    {
        /// Waiting for a clone of the service to be ready.
        Readying { service: S, req: Option<Req> },
        /// The call.
        Calling { #[pin] call: S::Future },
    }
}

impl<S: Service<Req>, Req> Future for Attempt<S, Req> {
    type Output = Result<S::Response, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                AttemptProj::Readying { service, req } => {
                    ready!(service.poll_ready(cx))?;
                    let Some(req) = req.take() else {
                        unreachable!("a readied attempt is called once")
                    };
                    let call = service.call(req);
                    self.set(Attempt::Calling { call });
                }
                AttemptProj::Calling { call } => return call.poll(cx),
            }
        }
    }
}
