//! The composed pipeline: one deadline through every stage, hints honoured, on every runtime.

mod common;

use common::ms;

use std::time::Duration;

use tidewall::breaker::CircuitBreaker;
use tidewall::bulkhead::Bulkhead;
use tidewall::pipeline::Pipeline;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::{Clocked, Scripted};
use tidewall::{Backoff, Deadline, Error, Jitter, Rejected};

fn constant(delay: Duration, attempts: u32) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

async fn flaky_service_through_every_stage<R: Runtime>(rt: Clocked<R>) {
    let limiter = RateLimiter::builder(10, ms(1_000))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(ms(1_000))
        .rate_limit(limiter.clone())
        .bulkhead(Bulkhead::builder(1).runtime(rt.clone()).build().unwrap())
        .retry(constant(ms(50), 5))
        .breaker(
            CircuitBreaker::builder()
                .runtime(rt.clone())
                .consecutive_failures(10)
                .build()
                .unwrap(),
        )
        .attempt_timeout(ms(100))
        .build()
        .unwrap();
    let start = rt.now();
    let op = Scripted::with_latency(
        rt.clone(),
        [(ms(10), Err("e1")), (ms(500), Ok(1)), (ms(10), Ok(2))],
    );
    // Attempt 1 fails at 10 ms; sleep 50; attempt 2 times out at 160; sleep 50; attempt 3 ok at 220.
    assert_eq!(pipeline.call(|| op.call()).await, Ok(2));
    assert_eq!(rt.now() - start, ms(220));
    assert_eq!(op.start_offsets(), [ms(0), ms(60), ms(210)]);

    // The limiter's wait counts against the deadline: with the cell just taken, the next is
    // 100 ms away, and a 50 ms caller deadline is refused at once.
    limiter.check().unwrap();
    let before = rt.now();
    let refused = pipeline
        .call_before(Deadline::after(&rt, ms(50)), || async { Ok::<_, ()>(()) })
        .await;
    assert_eq!(refused, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(rt.now(), before, "refused without waiting");
}

#[test]
fn flaky_service_through_the_whole_pipeline_on_every_runtime() {
    on_every_runtime!(flaky_service_through_every_stage);
}

async fn retry_honours_the_breakers_hint<R: Runtime>(rt: Clocked<R>) {
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(ms(300))
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(ms(10), 3))
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let op = Scripted::new(rt.clone(), [Err("down"), Ok(7)]);
    let start = rt.now();
    // Fails at 0 → breaker opens for 300 ms; the retry after 10 ms is rejected with
    // retry_after = 290 ms, so the next retry waits for it instead of burning attempts.
    assert_eq!(pipeline.call(|| op.call()).await, Ok(7));
    assert_eq!(op.start_offsets(), [ms(0), ms(300)]);
    assert_eq!(rt.now() - start, ms(300));
}

#[test]
fn the_retry_stage_honours_circuit_open_hints_on_every_runtime() {
    on_every_runtime!(retry_honours_the_breakers_hint);
}

async fn no_retry_that_cannot_finish<R: Runtime>(rt: Clocked<R>) {
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(ms(100))
        .retry(constant(ms(80), 5))
        .min_attempt_time(ms(30))
        .build()
        .unwrap();
    let op = Scripted::new(rt.clone(), [Err("e1"), Err("e2"), Ok(1)]);
    let start = rt.now();
    // After the first failure at 0, 80 ms of sleep + 30 ms of attempt do not fit in 100 ms.
    assert_eq!(pipeline.call(|| op.call()).await, Err(Error::Inner("e1")));
    assert_eq!(rt.now(), start, "no pointless sleep");
}

#[test]
fn a_retry_that_cannot_finish_is_not_started_on_every_runtime() {
    on_every_runtime!(no_retry_that_cannot_finish);
}

#[test]
fn bad_configuration_is_a_typed_error() {
    let rt = Clocked::new(tidewall::rt::Tokio);
    assert_eq!(
        Pipeline::builder()
            .runtime(rt.clone())
            .deadline(Duration::ZERO)
            .build()
            .map(drop),
        Err(tidewall::ConfigError::Zero { field: "deadline" })
    );
    assert_eq!(
        Pipeline::builder()
            .runtime(rt)
            .attempt_timeout(Duration::MAX)
            .build()
            .map(drop),
        Err(tidewall::ConfigError::DurationOverflow {
            field: "attempt_timeout"
        })
    );
}

async fn caller_deadline_cutoffs_leave_the_breaker_alone<R: Runtime>(rt: Clocked<R>) {
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .breaker(breaker.clone())
        .attempt_timeout(ms(500))
        .build()
        .unwrap();
    let slow = Scripted::<_, (), &str>::with_latency(rt.clone(), [(ms(1_000), Ok(()))]);
    let cut = pipeline
        .call_before(Deadline::after(&rt, ms(20)), || slow.call())
        .await;
    assert_eq!(cut, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(
        breaker.state(),
        tidewall::breaker::State::Closed,
        "the caller's impatience is not the service's failure"
    );
    // The attempt timeout, on the other hand, is the service's failure.
    let slow = Scripted::<_, (), &str>::with_latency(rt.clone(), [(ms(1_000), Ok(()))]);
    assert_eq!(pipeline.call(|| slow.call()).await, Err(Error::TimedOut));
    assert_eq!(breaker.state(), tidewall::breaker::State::Open);
}

#[test]
fn caller_deadline_cutoffs_leave_the_breaker_alone_on_every_runtime() {
    on_every_runtime!(caller_deadline_cutoffs_leave_the_breaker_alone);
}

async fn concurrent_calls_draw_their_own_jitter<R: Runtime>(rt: Clocked<R>) {
    let backoff = Backoff::exponential(ms(100))
        .max_attempts(2)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(backoff)
        .build()
        .unwrap();
    let (a, b) = (
        Scripted::new(rt.clone(), [Err("e"), Ok(1)]),
        Scripted::new(rt.clone(), [Err("e"), Ok(2)]),
    );
    let (ra, rb) = futures_util::join!(pipeline.call(|| a.call()), pipeline.call(|| b.call()));
    assert_eq!((ra, rb), (Ok(1), Ok(2)));
    assert_ne!(
        a.start_offsets()[1],
        b.start_offsets()[1],
        "two calls failing together retry at different times"
    );
}

#[test]
fn concurrent_calls_draw_their_own_jitter_on_every_runtime() {
    on_every_runtime!(concurrent_calls_draw_their_own_jitter);
}

/// Stages chosen at run time: `Some` runs the stage, `None` admits and gates nothing, and
/// both are one pipeline type.
#[tokio::test(start_paused = true)]
async fn optional_stages_run_when_some_and_admit_everything_when_none() {
    fn build(
        with: bool,
    ) -> Pipeline<
        tidewall::rt::Tokio,
        Option<RateLimiter>,
        Option<Bulkhead>,
        (),
        Option<CircuitBreaker>,
    > {
        let limiter = RateLimiter::builder(1, Duration::from_secs(60))
            .build()
            .unwrap();
        let bulkhead = Bulkhead::builder(1).build().unwrap();
        let breaker = CircuitBreaker::builder()
            .consecutive_failures(1)
            .build()
            .unwrap();
        Pipeline::builder()
            .deadline(ms(10))
            .rate_limit(with.then_some(limiter))
            .bulkhead(with.then_some(bulkhead))
            .breaker(with.then_some(breaker))
            .build()
            .unwrap()
    }
    let some = build(true);
    assert_eq!(
        some.call(|| async { Err::<(), _>("down") }).await,
        Err(Error::Inner("down"))
    );
    // The limiter's next cell is a minute away, past the 10 ms deadline.
    let refused = some.call(|| async { Ok::<_, &str>(()) }).await;
    assert_eq!(refused, Err(Error::Rejected(Rejected::DeadlineExceeded)));

    let none = build(false);
    for _ in 0..3 {
        assert_eq!(
            none.call(|| async { Err::<(), _>("down") }).await,
            Err(Error::Inner("down"))
        );
    }
    assert_eq!(
        none.call(|| async { Ok::<_, &str>(7) }).await,
        Ok(7),
        "no breaker opened"
    );
}

/// A wait for the rate limit that would leave exactly `min_attempt_time` is refused at once
/// (the attempt needs more than that), never waited out only to be refused at its end.
async fn an_exact_fit_wait_is_refused_at_once<R: Runtime>(rt: Clocked<R>) {
    let limiter = RateLimiter::builder(1, Duration::from_secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .rate_limit(limiter)
        .min_attempt_time(ms(100))
        .build()
        .unwrap();
    let start = rt.now();
    let calls = std::sync::atomic::AtomicU32::new(0);
    let op = || {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { Ok::<(), ()>(()) }
    };
    let within = |d| Deadline::at(start + d);
    assert_eq!(pipeline.call_before(within(ms(1100)), op).await, Ok(()));
    // The next cell is 1 s away: it would leave exactly 100 ms of the 1.1 s.
    let refused = pipeline.call_before(within(ms(1100)), op).await;
    assert_eq!(refused, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(rt.now(), start, "refused at once, not after a 1 s wait");
    // A nanosecond more fits: waited for, then called.
    let fits = pipeline
        .call_before(within(ms(1100) + Duration::from_nanos(1)), op)
        .await;
    assert_eq!(fits, Ok(()));
    assert_eq!(rt.now() - start, Duration::from_secs(1));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn an_exact_fit_wait_is_refused_at_once_on_every_runtime() {
    on_every_runtime!(an_exact_fit_wait_is_refused_at_once);
}
