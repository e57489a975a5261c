//! Retry and deadline scenarios, on every runtime adapter, in virtual time.

mod common;

use common::ms;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidewall::classify::Verdict;
use tidewall::retry::{Outcome, RetryError, RetryEvent};
use tidewall::rt::Runtime;
use tidewall::testing::Scripted;
use tidewall::{Backoff, Deadline, Jitter, RetryAfter, RetryExt};

fn exact(initial: Duration, attempts: u32) -> Backoff {
    Backoff::exponential(initial)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

async fn fails_twice_then_succeeds<R: Runtime>(rt: R) {
    let op = Scripted::new(rt.clone(), [Err("down"), Err("down"), Ok(7)]);
    let result = (|| op.call()).retry_on(&rt, exact(ms(100), 5)).await;
    assert_eq!(result, Ok(7));
    // base × factor^n: 100 ms, then 200 ms.
    assert_eq!(op.start_offsets(), [ms(0), ms(100), ms(300)]);
}

#[test]
fn retries_with_exact_backoff_on_every_runtime() {
    on_every_runtime!(fails_twice_then_succeeds);
}

async fn deadline_stops_before_a_sleep_that_cannot_finish<R: Runtime>(rt: R) {
    let op = Scripted::<_, (), _>::new(rt.clone(), [Err("down")]);
    let start = rt.now();
    let backoff = Backoff::constant(ms(300))
        .jitter(Jitter::None)
        .max_attempts(100)
        .build()
        .unwrap();
    let result = (|| op.call())
        .retry_on(&rt, backoff)
        .deadline(Deadline::after(&rt, ms(1000)))
        .await;
    assert_eq!(
        result,
        Err(RetryError::DeadlineExceeded {
            last_error: Some("down"),
            attempts: 4
        })
    );
    assert_eq!(op.start_offsets(), [ms(0), ms(300), ms(600), ms(900)]);
    // It returned at once instead of sleeping to 1200 ms.
    assert_eq!(rt.now() - start, ms(900));
}

#[test]
fn deadline_spans_attempts_and_sleeps_on_every_runtime() {
    on_every_runtime!(deadline_stops_before_a_sleep_that_cannot_finish);
}

async fn deadline_cuts_a_running_attempt<R: Runtime>(rt: R) {
    let op = Scripted::<_, (), &str>::with_latency(rt.clone(), [(Duration::from_secs(5), Ok(()))]);
    let start = rt.now();
    let result = (|| op.call())
        .retry_on(&rt, exact(ms(10), 3))
        .deadline(Deadline::after(&rt, ms(2000)))
        .await;
    assert_eq!(
        result,
        Err(RetryError::DeadlineExceeded {
            last_error: None,
            attempts: 1
        })
    );
    assert_eq!(rt.now() - start, ms(2000));
}

#[test]
fn deadline_cuts_a_running_attempt_on_every_runtime() {
    on_every_runtime!(deadline_cuts_a_running_attempt);
}

async fn attempt_timeout_is_retryable<R: Runtime>(rt: R) {
    let slow_then_fast = [
        (Duration::from_secs(10), Ok(1)),
        (Duration::from_secs(10), Ok(1)),
        (ms(5), Ok(2)),
    ];
    let op = Scripted::<_, i32, ()>::with_latency(rt.clone(), slow_then_fast);
    let backoff = Backoff::constant(ms(50))
        .jitter(Jitter::None)
        .max_attempts(3)
        .build()
        .unwrap();
    let result = (|| op.call())
        .retry_on(&rt, backoff)
        .attempt_timeout(ms(1000))
        .await;
    assert_eq!(result, Ok(2));
    assert_eq!(op.start_offsets(), [ms(0), ms(1050), ms(2100)]);

    let always_slow =
        Scripted::<_, i32, ()>::with_latency(rt.clone(), [(Duration::from_secs(10), Ok(1))]);
    let backoff = Backoff::constant(ms(50))
        .jitter(Jitter::None)
        .max_attempts(2)
        .build()
        .unwrap();
    let result = (|| always_slow.call())
        .retry_on(&rt, backoff)
        .attempt_timeout(ms(100))
        .await;
    assert_eq!(result, Err(RetryError::AttemptTimedOut));
}

#[test]
fn attempt_timeout_on_every_runtime() {
    on_every_runtime!(attempt_timeout_is_retryable);
}

async fn min_attempt_time_skips_a_doomed_attempt<R: Runtime>(rt: R) {
    let op = Scripted::<_, (), _>::new(rt.clone(), [Err("down")]);
    let backoff = Backoff::constant(ms(400))
        .jitter(Jitter::None)
        .max_attempts(10)
        .build()
        .unwrap();
    let result = (|| op.call())
        .retry_on(&rt, backoff)
        .deadline(Deadline::after(&rt, ms(1000)))
        .min_attempt_time(ms(300))
        .await;
    // Retry 1 at 400 ms leaves 600 ms; retry 2 at 800 ms would leave only 200 ms < 300 ms.
    assert_eq!(op.start_offsets(), [ms(0), ms(400)]);
    assert!(matches!(
        result,
        Err(RetryError::DeadlineExceeded { attempts: 2, .. })
    ));
}

#[test]
fn min_attempt_time_on_every_runtime() {
    on_every_runtime!(min_attempt_time_skips_a_doomed_attempt);
}

#[derive(Debug, Clone, PartialEq)]
enum ApiError {
    Throttled(Duration),
    Invalid,
}

impl RetryAfter for ApiError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled(wait) => Some(*wait),
            Self::Invalid => None,
        }
    }
}

async fn hints_are_honoured_and_capped<R: Runtime>(rt: R) {
    let script = [
        Err(ApiError::Throttled(ms(5000))),
        Err(ApiError::Throttled(ms(600_000))),
        Ok(1),
    ];
    let op = Scripted::new(rt.clone(), script);
    let result = (|| op.call())
        .retry_on(&rt, exact(ms(100), 5))
        .honor_retry_after()
        .max_retry_after(ms(10_000))
        .await;
    assert_eq!(result, Ok(1));
    // 5 s as hinted, then the 600 s hint cut to the 10 s cap.
    assert_eq!(op.start_offsets(), [ms(0), ms(5000), ms(15_000)]);

    let ignored = Scripted::new(rt.clone(), [Err(ApiError::Throttled(ms(5000))), Ok(1)]);
    let _ = (|| ignored.call()).retry_on(&rt, exact(ms(100), 5)).await;
    assert_eq!(ignored.start_offsets(), [ms(0), ms(100)]);
}

#[test]
fn retry_after_hints_on_every_runtime() {
    on_every_runtime!(hints_are_honoured_and_capped);
}

async fn predicates_and_notify<R: Runtime>(rt: R) {
    let op = Scripted::new(rt.clone(), [Err(ApiError::Invalid), Ok(1)]);
    let result = (|| op.call())
        .retry_on(&rt, exact(ms(1), 5))
        .when(|e: &ApiError| *e != ApiError::Invalid)
        .await;
    assert_eq!(result, Err(RetryError::Inner(ApiError::Invalid)));
    assert_eq!(op.calls(), 1);

    let pending =
        Scripted::<_, &str, ApiError>::new(rt.clone(), [Ok("pending"), Ok("pending"), Ok("done")]);
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&events);
    let result = (|| pending.call())
        .retry_on(&rt, exact(ms(10), 5))
        .classify(pending_is_retryable)
        .notify(move |e: &RetryEvent<'_, &str, ApiError>| {
            assert!(matches!(e.outcome, Outcome::Value(&"pending")));
            log.lock().unwrap().push((e.attempt, e.delay));
        })
        .await;
    assert_eq!(result, Ok("done"));
    assert_eq!(*events.lock().unwrap(), [(1, ms(10)), (2, ms(20))]);

    // A retryable value is returned, not lost, when the schedule runs out.
    let stuck = Scripted::<_, &str, ApiError>::new(rt.clone(), [Ok("pending")]);
    let result = (|| stuck.call())
        .retry_on(&rt, exact(ms(10), 2))
        .classify(pending_is_retryable)
        .await;
    assert_eq!(result, Ok("pending"));
}

/// `Ok("pending")` is retried; every error is too.
fn pending_is_retryable(result: Result<&&str, &ApiError>) -> Verdict {
    match result {
        Ok(&"pending") | Err(_) => Verdict::RetryableFailure,
        Ok(_) => Verdict::Success,
    }
}

#[test]
fn predicates_and_notify_on_every_runtime() {
    on_every_runtime!(predicates_and_notify);
}

#[tokio::test(start_paused = true)]
async fn jittered_delays_are_reproducible_with_a_seed() {
    let run = |seed| async move {
        let op = Scripted::<_, (), _>::new(tidewall::rt::Tokio, [Err(())]);
        let backoff = Backoff::exponential(ms(100))
            .max_attempts(6)
            .build()
            .unwrap();
        let _ = (|| op.call()).retry(backoff).seed(seed).await;
        op.start_offsets()
    };
    let a = run(11).await;
    assert_eq!(a, run(11).await);
    assert_ne!(a, run(12).await);
    // Full jitter never exceeds the un-jittered schedule: 100 + 200 + 400 + 800 + 1600.
    assert!(*a.last().unwrap() <= ms(3100));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_retry_stops_calling_the_operation() {
    let op = Scripted::<_, (), _>::new(tidewall::rt::Tokio, [Err(())]);
    let backoff = Backoff::constant(ms(100))
        .jitter(Jitter::None)
        .max_attempts(100)
        .build()
        .unwrap();
    let retry = (|| op.call()).retry(backoff).into_future();
    let _ = tokio::time::timeout(ms(250), retry).await;
    let calls = op.calls();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(op.calls(), calls);
    assert_eq!(calls, 3);
}

use std::future::IntoFuture;
