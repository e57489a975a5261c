//! The response future: attempts and sleeps, each decided by the retry engine.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_service::Service;

use super::RetryLayer;
use crate::Deadline;
use crate::classify::Classify;
use crate::retry::HintSource;
use crate::retry::engine::{Attempts, Step};
use crate::rt::Clock;

pin_project! {
    /// The response future of a [`RetryService`](super::RetryService): the first attempt on
    /// the service that was polled ready, each retry on the same service once it is ready
    /// again, each pause and each verdict decided by the [retry engine](crate::retry).
    ///
    /// **Cancel safety:** dropping it drops the running attempt or the pause; nothing else is
    /// held (a retry budget's deposit for this call stays made).
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, Req, R, C, H>
    where
        S: Service<Req>,
        R: Clock,
    {
        // The service retries are made on (a clone of the one the first attempt used); none
        // when no retry could follow the first attempt.
        service: Option<S>,
        // The request while a retry may follow; taken for the last attempt that can be made.
        request: Option<Req>,
        // The request of the attempt about to be made.
        next: Option<Req>,
        layer: Arc<RetryLayer<R, C, H>>,
        // The layer's hint source, this call's own (reading a hint may change it).
        hints: H,
        deadline: Deadline,
        attempts: Attempts,
        #[pin]
        state: State<S::Future, Pin<Box<R::Sleep>>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Call, Pause> {
        Starting,
        Readying,
        Calling { #[pin] call: Call },
        // Boxed (by the future): a timer is large, and moving it with every call that never
        // retries cost more than allocating it for the calls that do.
        Pausing { pause: Pause },
    }
}

impl<S: Service<Req>, Req, R: Clock, C, H> ResponseFuture<S, Req, R, C, H> {
    /// The call, its first attempt already made on the service that was polled ready.
    #[inline]
    pub(super) fn first_attempt(
        first: S::Future,
        retries: Option<(S, Req)>,
        layer: Arc<RetryLayer<R, C, H>>,
        hints: H,
        deadline: Deadline,
        attempts: Attempts,
    ) -> Self {
        let (service, request) = retries.unzip();
        Self {
            service,
            request,
            next: None,
            layer,
            hints,
            deadline,
            attempts,
            state: State::Calling { call: first },
        }
    }
}

impl<S, Req, R, C, H> Future for ResponseFuture<S, Req, R, C, H>
where
    S: Service<Req>,
    Req: Clone,
    R: Clock,
    C: Classify<S::Response, S::Error>,
    H: HintSource<S::Error>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let rt = &this.layer.rt;
        loop {
            match this.state.as_mut().project() {
                StateProj::Starting => {
                    let rules = &this.layer.rules;
                    rules.begin(this.attempts, || rt.now());
                    // Clone only when a retry could follow this attempt; the last possible
                    // attempt sends the original.
                    *this.next = if rules.retry_possible(this.attempts, || rt.now()) {
                        this.request.clone()
                    } else {
                        this.request.take()
                    };
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    let (Some(service), Some(request)) = (this.service.as_mut(), this.next.take())
                    else {
                        unreachable!("a retry is made only with a service and a request")
                    };
                    if let Poll::Ready(ready) = service.poll_ready(cx) {
                        ready?;
                    } else {
                        *this.next = Some(request);
                        return Poll::Pending;
                    }
                    let call = service.call(request);
                    this.state.set(State::Calling { call });
                }
                StateProj::Calling { call } => {
                    let result = ready!(call.poll(cx));
                    if this.request.is_none() {
                        // The original went out: nothing is left to retry with.
                        return Poll::Ready(result);
                    }
                    let verdict = this.layer.classify.classify(result.as_ref());
                    let hint = match &result {
                        Err(error) if verdict.is_retryable() => this.hints.hint(error),
                        _ => None,
                    };
                    let step = this.layer.rules.after(
                        this.attempts,
                        verdict,
                        hint,
                        *this.deadline,
                        || rt.now(),
                    );
                    match step {
                        Step::Retry(delay) if delay.is_zero() => this.state.set(State::Starting),
                        Step::Retry(delay) => {
                            let pause = Box::pin(rt.sleep(delay));
                            this.state.set(State::Pausing { pause });
                        }
                        Step::Stop(_) => return Poll::Ready(result),
                    }
                }
                StateProj::Pausing { pause } => {
                    ready!(pause.as_mut().poll(cx));
                    this.state.set(State::Starting);
                }
            }
        }
    }
}

impl<S: Service<Req>, Req, R: Clock, C, H> std::fmt::Debug for ResponseFuture<S, Req, R, C, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}
