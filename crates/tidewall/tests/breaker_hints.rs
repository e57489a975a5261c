//! A failure's hint holds the breaker open: a failed result that asks for a wait (a server's
//! `Retry-After`, read by the classifier) keeps the breaker it opens open for that wait when
//! it is longer than the break, capped by `max_open_hint` — the same through the direct API,
//! the pipeline and the tower layer.

mod common;

use common::ms;

use std::time::Duration;

use tidewall::breaker::{CircuitBreaker, Outcome, State};
use tidewall::classify::{Hinted, Verdict};
use tidewall::pipeline::Pipeline;
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::Clocked;
use tidewall::tower::BreakerLayer;
use tidewall::{ConfigError, Error, Rejected};
use tower_layer::Layer;
use tower_service::Service;

/// A value from this one up is a failed response asking to wait `value - BUSY` ms (an `Ok`
/// 503 with `Retry-After`).
const BUSY: u32 = 1_000;

fn judge(result: Result<&u32, &()>) -> Verdict {
    match result {
        Ok(value) if *value >= BUSY => Verdict::Failure,
        Ok(_) => Verdict::Success,
        Err(()) => Verdict::Failure,
    }
}

fn wait_asked(result: Result<&u32, &()>) -> Option<Duration> {
    Some(ms(u64::from(result.ok()?.checked_sub(BUSY)?)))
}

type Classifier =
    Hinted<fn(Result<&u32, &()>) -> Verdict, fn(Result<&u32, &()>) -> Option<Duration>>;

fn hinted() -> Classifier {
    Hinted(judge, wait_asked)
}

/// Opens on one failure, for a 100 ms break; hints up to `cap`.
fn breaker<R: Runtime>(
    rt: &Clocked<R>,
    failures: u32,
    cap: Duration,
) -> CircuitBreaker<Clocked<R>> {
    CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(failures)
        .break_duration(ms(100))
        .max_open_hint(cap)
        .build()
        .unwrap()
}

/// How long the breaker stays open from now: the `retry_after` it refuses with.
fn open_for<R: Runtime>(breaker: &CircuitBreaker<Clocked<R>>) -> Duration {
    match breaker.try_acquire() {
        Err(Rejected::CircuitOpen { retry_after }) => retry_after,
        Err(other) => panic!("refused with {other:?}"),
        Ok(_) => Duration::ZERO,
    }
}

/// One call answering `value` through each front; returns the breaker it went through.
async fn through_every_front<R: Runtime>(
    rt: &Clocked<R>,
    value: u32,
) -> Vec<(&'static str, CircuitBreaker<Clocked<R>>)> {
    let cap = Duration::from_secs(10);
    let direct = breaker(rt, 1, cap);
    let answer = direct
        .call_classified(|| async move { Ok::<_, ()>(value) }, hinted())
        .await;
    assert_eq!(answer, Ok(value));

    let piped = breaker(rt, 1, cap);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .breaker(piped.clone())
        .classify(judge as fn(Result<&u32, &()>) -> Verdict)
        .retry_after_with(wait_asked)
        .build()
        .unwrap();
    assert_eq!(
        pipeline.call(|| async move { Ok::<_, ()>(value) }).await,
        Ok(value)
    );

    let layered = breaker(rt, 1, cap);
    let typed = |result: Result<&u32, &Error<()>>| match result {
        Ok(value) => judge(Ok(value)),
        Err(_) => Verdict::Failure,
    };
    let typed_hint = |result: Result<&u32, &Error<()>>| wait_asked(result.ok().ok_or(&()));
    let mut service = BreakerLayer::new(layered.clone())
        .classify(Hinted(typed, typed_hint))
        .layer(tower::service_fn(move |(): ()| async move {
            Ok::<_, Error<()>>(value)
        }));
    assert_eq!(service.call(()).await, Ok(value));

    vec![("direct", direct), ("pipeline", piped), ("tower", layered)]
}

async fn a_failures_hint_holds_the_breaker_open<R: Runtime>(rt: Clocked<R>) {
    let fronts = through_every_front(&rt, BUSY + 2_000).await;
    for (front, breaker) in &fronts {
        assert_eq!(breaker.state(), State::Open, "{front}");
        let hinted = open_for(breaker);
        assert_eq!(hinted, ms(2_000), "{front}: the hint, not the 100 ms break");
    }
    rt.sleep(ms(1_999)).await;
    for (front, breaker) in &fronts {
        assert_eq!(open_for(breaker), ms(1), "{front}");
    }
    rt.sleep(ms(1)).await;
    for (front, breaker) in &fronts {
        let probe = breaker.try_acquire();
        assert!(probe.is_ok(), "{front}: a probe once the hint is over");
    }
    // A hint shorter than the break changes nothing.
    for (front, breaker) in through_every_front(&rt, BUSY + 20).await {
        assert_eq!(open_for(&breaker), ms(100), "{front}: the break is longer");
    }
    // A success carries no hint that is read.
    for (front, breaker) in through_every_front(&rt, 7).await {
        assert_eq!(breaker.state(), State::Closed, "{front}");
    }
}

#[test]
fn a_failures_hint_holds_the_breaker_open_through_every_front_on_every_runtime() {
    on_every_runtime!(a_failures_hint_holds_the_breaker_open);
}

async fn the_hint_is_capped<R: Runtime>(rt: Clocked<R>) {
    let capped = breaker(&rt, 1, Duration::from_secs(1));
    capped
        .try_acquire()
        .unwrap()
        .record_hinted(Outcome::Failure, Some(Duration::from_secs(5)));
    assert_eq!(
        open_for(&capped),
        Duration::from_secs(1),
        "cut to max_open_hint"
    );

    let deaf = breaker(&rt, 1, Duration::ZERO);
    deaf.try_acquire()
        .unwrap()
        .record_hinted(Outcome::Failure, Some(Duration::from_secs(5)));
    assert_eq!(open_for(&deaf), ms(100), "zero ignores hints");

    let unbounded = breaker(&rt, 1, Duration::from_nanos(u64::MAX));
    unbounded
        .try_acquire()
        .unwrap()
        .record_hinted(Outcome::Failure, Some(Duration::MAX));
    assert!(
        open_for(&unbounded) > Duration::from_secs(100 * 365 * 24 * 3600),
        "no overflow"
    );
}

#[test]
fn a_hint_is_capped_by_max_open_hint_and_zero_ignores_it_on_every_runtime() {
    on_every_runtime!(the_hint_is_capped);
}

async fn only_the_tripping_failure_counts<R: Runtime>(rt: Clocked<R>) {
    let cap = Duration::from_secs(10);
    // Two failures open it: the first one's hint trips nothing and is forgotten.
    let breaker = breaker(&rt, 2, cap);
    breaker
        .try_acquire()
        .unwrap()
        .record_hinted(Outcome::Failure, Some(Duration::from_secs(5)));
    assert_eq!(breaker.state(), State::Closed);
    breaker.try_acquire().unwrap().record(Outcome::Failure);
    assert_eq!(
        open_for(&breaker),
        ms(100),
        "the tripping failure had no hint"
    );

    // A failed probe reopens for its own hint.
    rt.sleep(ms(100)).await;
    let probe = breaker.try_acquire().unwrap();
    assert!(probe.is_probe());
    probe.record_hinted(Outcome::Failure, Some(Duration::from_secs(3)));
    assert_eq!(open_for(&breaker), Duration::from_secs(3));

    // A hint on a success or an ignored outcome is not read.
    rt.sleep(Duration::from_secs(3)).await;
    breaker
        .try_acquire()
        .unwrap()
        .record_hinted(Outcome::Ignored, Some(Duration::from_secs(9)));
    breaker
        .try_acquire()
        .unwrap()
        .record_hinted(Outcome::Success, Some(Duration::from_secs(9)));
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn only_the_failure_that_opens_the_breaker_has_its_hint_read_on_every_runtime() {
    on_every_runtime!(only_the_tripping_failure_counts);
}

#[test]
fn a_max_open_hint_beyond_u64_nanoseconds_is_a_typed_error() {
    let built = CircuitBreaker::builder()
        .max_open_hint(Duration::MAX)
        .build();
    assert!(matches!(
        built,
        Err(ConfigError::DurationOverflow {
            field: "max_open_hint"
        })
    ));
}
