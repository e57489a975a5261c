//! A schedule of zero delays retries at once, but never in a loop that holds the thread: each
//! retry engine (the retry future, the pipeline, the tower layer) yields to the executor
//! before an attempt that follows a zero delay, so an operation that fails without ever
//! waiting cannot starve the executor, and an outer timeout or a cancellation can end it.
#![cfg(feature = "tower")]

use std::future::{Future, IntoFuture};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use tidewall::pipeline::Pipeline;
use tidewall::retry::RetryError;
use tidewall::testing::FakeClock;
use tidewall::tower::RetryLayer;
use tidewall::{Backoff, Error, Jitter, RetryExt};
use tower_layer::Layer;
use tower_service::Service;

const ATTEMPTS: u32 = 1_000;

fn at_once() -> Backoff {
    Backoff::constant(std::time::Duration::ZERO)
        .jitter(Jitter::None)
        .max_attempts(ATTEMPTS)
        .build()
        .unwrap()
}

/// Counts its wake-ups: a future that yields must ask to be polled again.
#[derive(Default)]
struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Polls `future` once per step, checking that each poll runs one attempt and, while it is
/// not done, asks to be polled again; its output after the last attempt.
fn one_attempt_per_poll<F: Future>(future: F, calls: &AtomicUsize) -> F::Output {
    let wakes = Arc::new(Wakes::default());
    let waker = Waker::from(Arc::clone(&wakes));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    for poll in 1..=ATTEMPTS as usize {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => {
                assert_eq!(poll, ATTEMPTS as usize, "ended early");
                assert_eq!(calls.load(Ordering::SeqCst), poll);
                return output;
            }
            Poll::Pending => {
                assert_eq!(calls.load(Ordering::SeqCst), poll, "one attempt per poll");
                assert_eq!(wakes.0.load(Ordering::SeqCst), poll, "woken to go on");
            }
        }
    }
    panic!("still pending after every attempt");
}

#[test]
fn the_retry_future_yields_between_attempts_a_zero_delay_apart() {
    let calls = AtomicUsize::new(0);
    let op = || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err::<(), _>("down"))
    };
    let retry = op.retry(at_once()).runtime(FakeClock::new());
    let output = one_attempt_per_poll(retry.into_future(), &calls);
    assert_eq!(output, Err(RetryError::Inner("down")));
}

#[test]
fn the_pipeline_yields_between_attempts_a_zero_delay_apart() {
    let calls = AtomicUsize::new(0);
    let pipeline = Pipeline::builder()
        .runtime(FakeClock::new())
        .retry(at_once())
        .build()
        .unwrap();
    let call = pipeline.call(|| {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err::<(), _>("down"))
    });
    let output = one_attempt_per_poll(call, &calls);
    assert!(matches!(output, Err(Error::Inner("down"))), "{output:?}");
}

#[test]
fn the_tower_layer_yields_between_attempts_a_zero_delay_apart() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let inner = tower::service_fn(move |(): ()| {
        counted.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err::<(), Error<&str>>(Error::Inner("down")))
    });
    let mut service = RetryLayer::new(at_once())
        .runtime(FakeClock::new())
        .layer(inner);
    let noop = Waker::noop();
    assert!(
        service
            .poll_ready(&mut Context::from_waker(noop))
            .is_ready()
    );
    let output = one_attempt_per_poll(service.call(()), &calls);
    assert!(matches!(output, Err(Error::Inner("down"))), "{output:?}");
}
