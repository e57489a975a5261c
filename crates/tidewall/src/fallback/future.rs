//! The fallback future.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::Fallback;

pin_project_lite::pin_project! {
    /// Runs the primary future, then the fallback if the primary failed with an error the
    /// fallback handles. Created by
    /// [`FutureExt::or_fallback`](crate::time::FutureExt::or_fallback).
    #[must_use = "futures do nothing unless polled"]
    pub struct FallbackFuture<Fut, P: Fallback<T, E>, T, E> {
        #[pin]
        state: State<Fut, P::Future>,
        policy: Option<P>,
        _output: PhantomData<fn() -> (T, E)>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<Primary, Secondary> {
        Primary { #[pin] future: Primary },
        Secondary { #[pin] future: Secondary },
    }
}

impl<Fut, P: Fallback<T, E>, T, E> FallbackFuture<Fut, P, T, E> {
    pub(crate) fn new(future: Fut, policy: P) -> Self {
        Self {
            state: State::Primary { future },
            policy: Some(policy),
            _output: PhantomData,
        }
    }
}

impl<Fut, P, T, E> Future for FallbackFuture<Fut, P, T, E>
where
    Fut: Future<Output = Result<T, E>>,
    P: Fallback<T, E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, E>> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Primary { future } => match ready!(future.poll(cx)) {
                    Ok(value) => return Poll::Ready(Ok(value)),
                    Err(error) => {
                        let Some(policy) = this.policy.take() else {
                            return Poll::Ready(Err(error));
                        };
                        match policy.on_error(error) {
                            Ok(future) => this.state.set(State::Secondary { future }),
                            Err(error) => return Poll::Ready(Err(error)),
                        }
                    }
                },
                StateProj::Secondary { future } => return future.poll(cx),
            }
        }
    }
}

impl<Fut, P: Fallback<T, E>, T, E> std::fmt::Debug for FallbackFuture<Fut, P, T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackFuture").finish_non_exhaustive()
    }
}
