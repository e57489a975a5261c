//! The response future: admitting (when the call had to wait), then calling.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use crate::Rejected;
use crate::admission::Admission;
use crate::breaker::Outcome;
use crate::tower::PolicyError;

pin_project! {
    /// The response future of an [`AdmitService`](super::AdmitService).
    ///
    /// **Cancel safety:** dropping it drops the pending admission (leaving a bulkhead's
    /// queue) or the guard (freeing the slot); nothing is held afterwards.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, A, Req>
    where
        S: Service<Req>,
        A: Admission,
    {
        #[pin]
        state: State<S::Future, A::Guard, Pin<Box<Admitting<S, A::Admit, Req>>>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Call, Guard, Waiting> {
        // Boxed: a wait (a timer, a queue place, the request) is large, and moving it on
        // every admitted call would cost more than allocating on the calls that wait.
        Admitting { waiting: Waiting },
        Calling {
            #[pin]
            call: Call,
            guard: Option<Guard>,
        },
        // Refused while `poll_ready` waited: the call fails with it, the service uncalled.
        // Boxed: rare, and a bigger future would be moved on every admitted call.
        Refused { rejected: Option<Box<Rejected>> },
    }
}

pin_project! {
    /// A call waiting for admission, with the service it will be made on.
    struct Admitting<S, Admit, Req> {
        #[pin]
        admit: Admit,
        service: Option<S>,
        req: Option<Req>,
    }
}

impl<S: Service<Req>, A: Admission, Req> ResponseFuture<S, A, Req> {
    #[inline]
    pub(super) fn calling(call: S::Future, guard: A::Guard) -> Self {
        Self {
            state: State::Calling {
                call,
                guard: Some(guard),
            },
        }
    }

    /// A call whose wait in `poll_ready` was refused: it fails at once with the refusal.
    pub(super) fn refused(rejected: Rejected) -> Self {
        Self {
            state: State::Refused {
                rejected: Some(Box::new(rejected)),
            },
        }
    }

    pub(super) fn admitting(admit: A::Admit, service: S, req: Req) -> Self {
        Self {
            state: State::Admitting {
                waiting: Box::pin(Admitting {
                    admit,
                    service: Some(service),
                    req: Some(req),
                }),
            },
        }
    }
}

impl<S, A, Req> Future for ResponseFuture<S, A, Req>
where
    S: Service<Req>,
    S::Error: PolicyError,
    A: Admission,
{
    type Output = Result<S::Response, S::Error>;

    // Always, with the wait out of line: a poll that is not inlined returns its output through
    // memory, and reading it back stalls on store forwarding (as `AdmitService::call`).
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        match state.as_mut().project() {
            StateProj::Admitting { waiting } => {
                let (call, guard) = ready!(admit_then_call::<S, A, Req>(waiting.as_mut(), cx))?;
                state.set(State::Calling {
                    call,
                    guard: Some(guard),
                });
            }
            StateProj::Refused { rejected } => return Poll::Ready(Err(refusal(rejected))),
            StateProj::Calling { .. } => {}
        }
        let StateProj::Calling { call, guard } = state.project() else {
            unreachable!("the call is made once admitted");
        };
        let result = ready!(call.poll(cx));
        // The slot is free as soon as the call is done, not when the future is dropped.
        if let Some(guard) = guard.take() {
            A::finish(guard, learned(&result));
        }
        Poll::Ready(result)
    }
}

/// How the call ended, for `Admission::finish`: an error is a failure, unless a layer inside
/// refused the call, which is ignored: a `DeadlineExceeded` too, as a wait inside that ran
/// out (the dependency not called) looks the same as a call a deadline inside cut.
fn learned<T, E: PolicyError>(result: &Result<T, E>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(error) if error.rejection().is_some() => Outcome::Ignored,
        Err(_) => Outcome::Failure,
    }
}

/// The refusal a refused call fails with (once: polled again, it is the same refusal kind).
#[cold]
fn refusal<E: PolicyError>(rejected: &mut Option<Box<Rejected>>) -> E {
    E::rejected(
        rejected
            .take()
            .map_or(Rejected::BulkheadFull, |rejected| *rejected),
    )
}

/// A call made once admitted, with the guard it holds.
type Admitted<S, A, Req> = (<S as Service<Req>>::Future, <A as Admission>::Guard);

/// Polls the wait for admission and, once admitted, makes the call.
#[inline(never)]
fn admit_then_call<S, A, Req>(
    waiting: Pin<&mut Admitting<S, A::Admit, Req>>,
    cx: &mut Context<'_>,
) -> Poll<Result<Admitted<S, A, Req>, S::Error>>
where
    S: Service<Req>,
    S::Error: PolicyError,
    A: Admission,
{
    let waiting = waiting.project();
    let guard = ready!(waiting.admit.poll(cx)).map_err(S::Error::rejected)?;
    let (Some(mut service), Some(req)) = (waiting.service.take(), waiting.req.take()) else {
        unreachable!("an admitted call is made once");
    };
    Poll::Ready(Ok((service.call(req), guard)))
}

impl<S: Service<Req>, A: Admission, Req> std::fmt::Debug for ResponseFuture<S, A, Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
