//! The response future: attempts and sleeps, each decided by the retry engine.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower_service::Service;

use super::RetryLayer;
use crate::Deadline;
use crate::classify::Classify;
use crate::retry::engine::{Attempts, Step, Stop, keep_value};
use crate::rt::Clock;
use crate::tower::clones::next_request;
use crate::tower::{ByClone, CloneRequest};

pin_project! {
    /// The response future of a [`RetryService`](super::RetryService): the first attempt on
    /// the service that was polled ready, each retry on the same service once it is ready
    /// again, each pause and each verdict decided by the [retry engine](crate::retry).
    ///
    /// **Cancel safety:** dropping it drops the running attempt or the pause; nothing else is
    /// held (a retry budget's deposit for this call stays made).
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, Req, R, C, Q = ByClone>
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
        layer: Arc<RetryLayer<R, C, Q>>,
        deadline: Deadline,
        attempts: Attempts,
        // The latest response that was retried (judged a retryable failure): the answer if
        // the deadline leaves no time for another attempt. Boxed: only calls that retry a
        // response pay for its room.
        kept: Option<Box<S::Response>>,
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

impl<S: Service<Req>, Req, R: Clock, C, Q> ResponseFuture<S, Req, R, C, Q> {
    /// The call, its first attempt already made on the service that was polled ready.
    #[inline]
    pub(super) fn first_attempt(
        first: S::Future,
        retries: Option<(S, Req)>,
        layer: Arc<RetryLayer<R, C, Q>>,
        deadline: Deadline,
        attempts: Attempts,
    ) -> Self {
        let (service, request) = retries.unzip();
        Self {
            service,
            request,
            next: None,
            layer,
            deadline,
            attempts,
            kept: None,
            state: State::Calling { call: first },
        }
    }
}

impl<S, Req, R, C, Q> Future for ResponseFuture<S, Req, R, C, Q>
where
    S: Service<Req>,
    Q: CloneRequest<Req>,
    R: Clock,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<S::Response, S::Error>;

    // Always, with everything but a finished attempt out of line: a poll that is not inlined
    // returns its output through memory, and reading it back stalls on store forwarding.
    #[inline(always)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.as_mut().project();
        let retry_after = match this.state.project() {
            StateProj::Calling { call } => {
                let result = ready!(call.poll(cx));
                let last = this.request.is_none();
                let deadline = *this.deadline;
                match judge(this.layer, this.attempts, deadline, this.kept, last, result) {
                    ControlFlow::Break(output) => return Poll::Ready(output),
                    ControlFlow::Continue(delay) => Some(delay),
                }
            }
            _ => None,
        };
        self.poll_slow(cx, retry_after)
    }
}

impl<S, Req, R, C, Q> ResponseFuture<S, Req, R, C, Q>
where
    S: Service<Req>,
    Q: CloneRequest<Req>,
    R: Clock,
    C: Classify<S::Response, S::Error>,
{
    /// Everything but an attempt that ends the call: the pause before a retry (`retry_after`,
    /// when the attempt just judged is to be retried), readying the service, further attempts.
    #[inline(never)]
    fn poll_slow(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        retry_after: Option<Duration>,
    ) -> Poll<Result<S::Response, S::Error>> {
        let mut this = self.project();
        let rt = &this.layer.rt;
        if let Some(delay) = retry_after
            && pause(this.state.as_mut(), rt, delay, cx).is_pending()
        {
            return Poll::Pending;
        }
        loop {
            match this.state.as_mut().project() {
                StateProj::Starting => {
                    let rules = &this.layer.rules;
                    rules.begin(this.attempts, || rt.now());
                    // Copy only when a retry could follow this attempt; the last possible
                    // attempt, or one whose request cannot be copied, sends the original
                    // (and so is the last).
                    *this.next = next_request(&this.layer.clones, this.request, || {
                        rules.retry_possible(this.attempts, || rt.now())
                    });
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
                    let last = this.request.is_none();
                    let layer = &**this.layer;
                    let deadline = *this.deadline;
                    match judge(layer, this.attempts, deadline, this.kept, last, result) {
                        ControlFlow::Break(output) => return Poll::Ready(output),
                        ControlFlow::Continue(delay) => {
                            ready!(pause(this.state.as_mut(), rt, delay, cx));
                        }
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

/// After an attempt, the engine's step: the result that ends the call, or the delay before
/// the next attempt. `last`: the original request went out, so nothing is left to retry with
/// (the engine still says why the call ends: the deadline's end keeps a retried response).
#[inline(always)]
fn judge<R: Clock, C, Q, T, E>(
    layer: &RetryLayer<R, C, Q>,
    attempts: &mut Attempts,
    deadline: Deadline,
    kept: &mut Option<Box<T>>,
    last: bool,
    result: Result<T, E>,
) -> ControlFlow<Result<T, E>, Duration>
where
    C: Classify<T, E>,
{
    let (verdict, hint) = crate::classify::judge(&layer.classify, result.as_ref());
    let now = || layer.rt.now();
    let step = if last {
        Step::Stop(
            layer
                .rules
                .after_last(attempts, verdict, hint, deadline, now),
        )
    } else {
        layer.rules.after(attempts, verdict, hint, deadline, now)
    };
    match step {
        Step::Retry(delay) => {
            if let Ok(response) = result {
                keep_value(kept, response);
            }
            ControlFlow::Continue(delay)
        }
        Step::Stop(Stop::Deadline) => match (result, kept.take()) {
            (Err(_), Some(response)) => ControlFlow::Break(Ok(*response)),
            (result, _) => ControlFlow::Break(result),
        },
        Step::Stop(_) => ControlFlow::Break(result),
    }
}

/// Waits `delay` before the next attempt. No delay starts it at the next poll: `Pending`,
/// woken at once, so attempts that fail without waiting never hold the executor's thread
/// (nor keep an outer timeout from firing).
fn pause<Call, R: Clock>(
    mut state: Pin<&mut State<Call, Pin<Box<R::Sleep>>>>,
    rt: &R,
    delay: Duration,
    cx: &Context<'_>,
) -> Poll<()> {
    if delay.is_zero() {
        state.set(State::Starting);
        cx.waker().wake_by_ref();
        Poll::Pending
    } else {
        let pause = Box::pin(rt.sleep(delay));
        state.set(State::Pausing { pause });
        Poll::Ready(())
    }
}

impl<S: Service<Req>, Req, R: Clock, C, Q> std::fmt::Debug for ResponseFuture<S, Req, R, C, Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}
