//! The response future: the call, then its outcome recorded on the permit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use crate::Rejected;
use crate::breaker::{Outcome, OwnedPermit};
use crate::classify::{Classify, judge};
use crate::rt::Clock;
use crate::tower::PolicyError;

pin_project! {
    /// The response future of a [`BreakerService`](super::BreakerService): the breaker's
    /// rejection, or the call with its outcome recorded as the classifier judges it (a
    /// refusal from a layer below recorded as `Ignored`, nothing in the window).
    ///
    /// **Cancel safety:** dropping it before the call ends records nothing and gives a
    /// half-open probe slot back.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, R: Clock, C> {
        #[pin]
        state: State<F, R, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, R: Clock, C> {
        Rejected { rejected: Rejected },
        Calling {
            #[pin]
            call: F,
            permit: Option<OwnedPermit<R>>,
            classify: C,
        },
    }
}

impl<F, R: Clock, C> ResponseFuture<F, R, C> {
    #[inline]
    pub(super) fn calling(call: F, permit: OwnedPermit<R>, classify: C) -> Self {
        Self {
            state: State::Calling {
                call,
                permit: Some(permit),
                classify,
            },
        }
    }

    pub(super) fn rejected(rejected: Rejected) -> Self {
        Self {
            state: State::Rejected { rejected },
        }
    }
}

impl<F, R, C, T, E> Future for ResponseFuture<F, R, C>
where
    F: Future<Output = Result<T, E>>,
    E: PolicyError,
    R: Clock,
    C: Classify<T, E>,
{
    type Output = Result<T, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Rejected { rejected } => Poll::Ready(Err(E::rejected(*rejected))),
            StateProj::Calling {
                call,
                permit,
                classify,
            } => {
                let result = ready!(call.poll(cx));
                if let Some(permit) = permit.take() {
                    let (outcome, hint) = match &result {
                        // Refused below (a full bulkhead, an open breaker): not the service.
                        Err(error) if error.rejection().is_some() => (Outcome::Ignored, None),
                        result => {
                            let (verdict, hint) = judge(classify, result.as_ref());
                            (verdict.breaker_outcome(), hint)
                        }
                    };
                    permit.record_hinted(outcome, hint);
                }
                Poll::Ready(result)
            }
        }
    }
}

impl<F, R: Clock, C> std::fmt::Debug for ResponseFuture<F, R, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
