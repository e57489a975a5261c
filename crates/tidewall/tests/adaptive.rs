//! The adaptive limiter as users compose it: a pipeline's admission stage told how each call
//! ended, a tower layer, its own permits; in virtual time. A cancelled or ignored call never
//! counts as a fast success, a smaller limit revokes nothing, and a wait counts against the
//! pipeline's deadline.
#![cfg(all(feature = "tokio", feature = "test-util", feature = "tower"))]

mod common;

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use common::ms;
use futures_util::FutureExt as _;
use tidewall::adaptive::{AdaptiveLimiter, Aimd, Gradient2, LimitAlgorithm};
use tidewall::breaker::CircuitBreaker;
use tidewall::classify::Verdict;
use tidewall::pipeline::Pipeline;
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::Clocked;
use tidewall::tower::{AdmitLayer, AdmitMode};
use tidewall::{Error, Rejected};
use tidewall_core::rng::SplitMix64;
use tower_layer::Layer;
use tower_service::Service;

/// AIMD from 10 within 1..=100: +1 per call that found half the limit in use, ×0.5 per drop.
fn aimd(initial: u32) -> Aimd {
    Aimd::builder()
        .min_limit(1)
        .initial_limit(initial)
        .max_limit(100)
        .backoff_ratio(0.5)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_pipeline_teaches_the_limiter_how_each_call_ended() {
    let limiter = AdaptiveLimiter::builder(aimd(2)).build().unwrap();
    let pipeline = Pipeline::builder()
        .bulkhead(limiter.clone())
        .classify(|r: Result<&u32, &&str>| match r {
            Ok(404) => Verdict::Ignored,
            Ok(_) => Verdict::Success,
            Err(_) => Verdict::RetryableFailure,
        })
        .build()
        .unwrap();
    // One call of a limit of 2 is half of it: a success grows the limit.
    assert_eq!(
        pipeline.call(|| async { Ok::<u32, &str>(200) }).await,
        Ok(200)
    );
    assert_eq!(limiter.limit(), 3);
    // An ignored verdict teaches nothing.
    assert_eq!(
        pipeline.call(|| async { Ok::<u32, &str>(404) }).await,
        Ok(404)
    );
    assert_eq!(limiter.limit(), 3);
    // A failure is a drop: halved.
    assert!(
        pipeline
            .call(|| async { Err::<u32, _>("503") })
            .await
            .is_err()
    );
    assert_eq!(limiter.limit(), 1);
    assert_eq!(limiter.in_flight(), 0);
}

/// A call that never reached the dependency teaches nothing (`Admission::finish`: "any
/// ending before the dependency was called"): a caller deadline already past when the limiter
/// admits it, or one that leaves less than the first attempt's minimum time.
#[tokio::test(start_paused = true)]
async fn a_call_that_never_called_the_dependency_teaches_nothing() {
    let limiter = AdaptiveLimiter::builder(aimd(10)).build().unwrap();
    let pipeline = Pipeline::builder()
        .bulkhead(limiter.clone())
        .min_attempt_time(ms(100))
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let op = || {
        calls.fetch_add(1, SeqCst);
        async { Ok::<(), ()>(()) }
    };
    let rt = tidewall::rt::Tokio;
    for left in [ms(0), ms(50)] {
        let refused = pipeline
            .call_before(tidewall::Deadline::after(&rt, left), op)
            .await;
        assert_eq!(
            refused,
            Err(Error::Rejected(Rejected::DeadlineExceeded)),
            "{left:?}"
        );
    }
    assert_eq!(calls.load(SeqCst), 0);
    assert_eq!(
        (limiter.limit(), limiter.in_flight()),
        (10, 0),
        "no drop learned"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_never_counts_as_a_fast_success() {
    let limiter = AdaptiveLimiter::builder(aimd(2)).build().unwrap();
    let pipeline = Pipeline::builder()
        .bulkhead(limiter.clone())
        .build()
        .unwrap();
    let mut call = Box::pin(pipeline.call(|| async {
        tokio::time::sleep(ms(100)).await;
        Ok::<_, ()>(())
    }));
    assert!((&mut call).now_or_never().is_none());
    assert_eq!(limiter.in_flight(), 1);
    drop(call);
    assert_eq!((limiter.in_flight(), limiter.limit()), (0, 2), "untold");
    // A permit dropped without an outcome is the same.
    drop(limiter.try_acquire().unwrap());
    assert_eq!(limiter.limit(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_later_stages_refusal_is_ignored_and_a_timeout_is_a_drop() {
    let limiter = AdaptiveLimiter::builder(aimd(4)).build().unwrap();
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    breaker.force_open();
    let refused = Pipeline::builder()
        .bulkhead(limiter.clone())
        .breaker(breaker)
        .build()
        .unwrap();
    let open = refused.call(|| async { Ok::<_, ()>(()) }).await;
    assert!(matches!(
        open,
        Err(Error::Rejected(Rejected::CircuitOpen { .. }))
    ));
    assert_eq!(limiter.limit(), 4, "the dependency was not called");
    let timed = Pipeline::builder()
        .bulkhead(limiter.clone())
        .attempt_timeout(ms(50))
        .build()
        .unwrap();
    let slow = timed
        .call(|| async {
            tokio::time::sleep(ms(200)).await;
            Ok::<_, ()>(())
        })
        .await;
    assert_eq!(slow, Err(Error::TimedOut));
    assert_eq!(limiter.limit(), 2, "a timeout is a drop");
}

#[tokio::test(start_paused = true)]
async fn a_smaller_limit_revokes_nothing_and_a_wait_counts_against_the_deadline() {
    let limiter = AdaptiveLimiter::builder(aimd(4))
        .max_queue(8)
        .max_wait(None)
        .build()
        .unwrap();
    let held: Vec<_> = (0..4).map(|_| limiter.try_acquire().unwrap()).collect();
    assert_eq!(limiter.try_acquire().unwrap_err(), Rejected::BulkheadFull);
    let mut held = held.into_iter();
    held.next().unwrap().failure(); // 4 × 0.5: the limit is 2, three still held
    assert_eq!((limiter.limit(), limiter.in_flight()), (2, 3));
    assert!(
        limiter.try_acquire().is_err(),
        "none admitted until below the new limit"
    );
    // A pipeline's wait for a slot ends at its deadline.
    let pipeline = Pipeline::builder()
        .deadline(ms(100))
        .bulkhead(limiter.clone())
        .build()
        .unwrap();
    let waited = pipeline.call(|| async { Ok::<_, ()>(()) }).await;
    assert_eq!(waited, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    drop(held);
    assert_eq!(limiter.in_flight(), 0);
    assert_eq!(pipeline.call(|| async { Ok::<_, ()>(1) }).await, Ok(1));
}

#[derive(Clone)]
struct Echo;

impl Service<u32> for Echo {
    type Response = u32;
    type Error = Error<&'static str>;
    type Future = std::future::Ready<Result<u32, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u32) -> Self::Future {
        std::future::ready(if x == 0 {
            Err(Error::Inner("down"))
        } else {
            Ok(x)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_tower_layer_teaches_it_too() {
    let limiter = AdaptiveLimiter::builder(aimd(2)).build().unwrap();
    let mut service = AdmitLayer::new(limiter.clone(), AdmitMode::Reject).layer(Echo);
    assert_eq!(service.call(7).await, Ok(7));
    assert_eq!(limiter.limit(), 3);
    assert!(service.call(0).await.is_err());
    assert_eq!(limiter.limit(), 1);
}

/// Answers a refusal of every kind from a layer "inside", or a timeout.
#[derive(Clone)]
struct Refusing;

impl tower_service::Service<Option<Rejected>> for Refusing {
    type Response = u32;
    type Error = Error<&'static str>;
    type Future = std::future::Ready<Result<u32, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, refusal: Option<Rejected>) -> Self::Future {
        std::future::ready(Err(refusal.map_or(Error::TimedOut, Error::Rejected)))
    }
}

/// `AdmitLayer`: "a refusal from a layer inside (... a `DeadlineExceeded` included) is
/// ignored"; "an error a failure (a timeout from a layer inside included)".
#[tokio::test(start_paused = true)]
async fn a_tower_layer_ignores_every_refusal_from_inside_and_learns_timeouts() {
    let limiter = AdaptiveLimiter::builder(aimd(8)).build().unwrap();
    let mut service = AdmitLayer::new(limiter.clone(), AdmitMode::Reject).layer(Refusing);
    for refusal in [
        Rejected::DeadlineExceeded,
        Rejected::BulkheadFull,
        Rejected::CircuitOpen {
            retry_after: Duration::from_secs(1),
        },
        Rejected::BudgetExhausted,
        Rejected::RateLimited {
            retry_after: Duration::from_secs(1),
        },
    ] {
        assert_eq!(
            service.call(Some(refusal)).await,
            Err(Error::Rejected(refusal))
        );
        assert_eq!(limiter.limit(), 8, "{refusal:?} taught the limiter");
        assert_eq!(limiter.in_flight(), 0);
    }
    assert_eq!(service.call(None).await, Err(Error::TimedOut));
    assert_eq!(limiter.limit(), 4, "a timeout inside is a drop");
}

/// Gradient2 behind a pipeline of 16 callers: while the dependency answers in 10 ms the limit
/// climbs (to its most, 24: the callers keep more than half of it in use); when it slows to
/// 50 ms the limit backs off within the next calls. (A limit more than twice the calls in
/// flight would not move: an idle limit says nothing.) On every runtime adapter in virtual
/// time.
async fn follows_latency<R: Runtime + Clock>(rt: Clocked<R>) {
    let limiter = AdaptiveLimiter::builder(
        Gradient2::builder()
            .min_limit(2)
            .initial_limit(4)
            .max_limit(24)
            .build()
            .unwrap(),
    )
    .max_queue(64)
    .max_wait(None)
    .runtime(rt.clone())
    .build()
    .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(limiter.clone())
        .build()
        .unwrap();
    let latency = AtomicU32::new(10);
    let phase = |rounds: usize| {
        let (pipeline, rt, latency, limiter) = (&pipeline, &rt, &latency, &limiter);
        futures_util::future::join_all((0..16).map(move |_| async move {
            let mut least = u32::MAX;
            for _ in 0..rounds {
                let result = pipeline
                    .call(|| {
                        rt.sleep(ms(u64::from(latency.load(SeqCst))))
                            .map(Ok::<_, ()>)
                    })
                    .await;
                assert!(result.is_ok(), "{result:?}");
                least = least.min(limiter.limit());
            }
            least
        }))
    };
    phase(20).await;
    let before = limiter.limit();
    assert!(before > 4, "the limit climbed while latency held: {before}");
    latency.store(50, SeqCst);
    let least_after = phase(5).await.into_iter().min().unwrap();
    assert!(
        least_after < before,
        "the limit backed off from {before} when latency rose: least {least_after}"
    );
    assert_eq!(limiter.in_flight(), 0);
}

#[test]
fn the_limit_follows_latency_on_every_runtime() {
    on_every_runtime!(follows_latency);
}

#[test]
fn limit_algorithm_is_object_safe_for_users() {
    let algorithms: Vec<Box<dyn LimitAlgorithm>> = vec![Box::new(aimd(3))];
    assert_eq!(algorithms[0].limit(), 3);
}

/// Threads taking and ending calls while every ending moves the limit: no slot is lost or
/// leaked, and never more are in flight than the most the limit allows.
#[test]
fn threads_moving_the_limit_lose_no_slot() {
    let clock = tidewall::testing::FakeClock::new();
    let limiter = AdaptiveLimiter::builder(aimd(8))
        .runtime(clock.clone())
        .build()
        .unwrap();
    let most = std::sync::Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..4_u64)
        .map(|t| {
            let (limiter, most) = (limiter.clone(), std::sync::Arc::clone(&most));
            std::thread::spawn(move || {
                let mut rng = SplitMix64::new(0x9E37_79B9_7F4A_7C15 ^ t);
                let mut held = Vec::new();
                for _ in 0..20_000 {
                    if rng.below_or_equal(2) != 0 {
                        if let Ok(permit) = limiter.try_acquire() {
                            let now = u32::try_from(limiter.in_flight()).unwrap();
                            most.fetch_max(now, SeqCst);
                            held.push(permit);
                        }
                    } else if let Some(permit) = held.pop() {
                        match rng.below_or_equal(4) {
                            0 => permit.failure(),
                            1 => permit.ignore(),
                            2 => drop(permit),
                            _ => permit.success(),
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(limiter.in_flight(), 0, "every slot came back");
    assert!(
        most.load(SeqCst) <= 100,
        "never more than max_limit in flight"
    );
    let limit = limiter.limit();
    assert!((1..=100).contains(&limit), "{limit}");
    // The slots still match the limit: exactly `limit` can be taken now.
    let taken: Vec<_> = (0..limit).map(|_| limiter.try_acquire().unwrap()).collect();
    assert_eq!(limiter.try_acquire().unwrap_err(), Rejected::BulkheadFull);
    drop(taken);
}

/// An algorithm of the user's that answers a drop with a limit of zero (a "kill switch").
struct KillSwitch(u32);

impl LimitAlgorithm for KillSwitch {
    fn limit(&self) -> u32 {
        self.0
    }
    fn update(&mut self, sample: &tidewall_core::adaptive::Sample) -> u32 {
        self.0 = if sample.dropped { 0 } else { 5 };
        self.0
    }
    fn bounds(&self) -> (u32, u32) {
        (0, 5)
    }
}

/// "A limiter applies at least 1": a limit of zero from `update` would admit nothing, so no
/// sample could raise it again. The limiter keeps one call going and learns from it.
#[tokio::test(start_paused = true)]
async fn a_limit_of_zero_from_an_algorithm_is_applied_as_one() {
    let limiter = AdaptiveLimiter::builder(KillSwitch(3)).build().unwrap();
    limiter.try_acquire().unwrap().failure();
    assert_eq!(limiter.limit(), 1, "at least one call goes on");
    let probe = limiter.try_acquire().expect("one call is admitted");
    assert_eq!(limiter.try_acquire().unwrap_err(), Rejected::BulkheadFull);
    probe.success();
    assert_eq!(
        limiter.limit(),
        5,
        "it learned from the call it let through"
    );
    let held: Vec<_> = (0..5).map(|_| limiter.try_acquire().unwrap()).collect();
    assert_eq!(limiter.in_flight(), 5);
    drop(held);
}

/// "The choice is made once, at build": a limiter built before tokio's time is paused times
/// its calls in real time (a virtual minute's call looks instant), one built after in virtual
/// time (the same call is slower than AIMD's 30 s timeout: a drop).
#[cfg(feature = "quanta")]
#[tokio::test]
async fn the_clock_that_times_calls_is_chosen_at_build() {
    let aimd = || {
        Aimd::builder()
            .min_limit(1)
            .initial_limit(2)
            .max_limit(10)
            .backoff_ratio(0.5)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap()
    };
    let before = AdaptiveLimiter::builder(aimd()).build().unwrap();
    tokio::time::pause();
    let after = AdaptiveLimiter::builder(aimd()).build().unwrap();
    let (early, late) = (before.try_acquire().unwrap(), after.try_acquire().unwrap());
    tokio::time::sleep(Duration::from_secs(60)).await;
    early.success();
    late.success();
    assert_eq!(
        after.limit(),
        1,
        "a virtual minute is past the timeout: a drop halves 2"
    );
    assert_eq!(
        before.limit(),
        3,
        "real time: a fast success with half the limit in use"
    );
}
