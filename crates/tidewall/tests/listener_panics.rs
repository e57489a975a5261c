//! A listener that panics unwinds into the call it was told of, and the policy loses no
//! capacity to it: the bulkhead slot granted to a queued waiter, the adaptive limiter's, and a
//! breaker's half-open probe slot all come back. (Audit s35: each leaked for good.)
#![cfg(all(feature = "tokio", feature = "test-util"))]

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use futures_util::FutureExt as _;
use tidewall::Deadline;
use tidewall::adaptive::{AdaptiveLimiter, Aimd};
use tidewall::admission::{Admission, Wait};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::pipeline::Pipeline;
use tidewall::telemetry::{Event, EventKind};

fn panics_when_waited(event: &Event<'_>) {
    if matches!(event.kind, EventKind::Waited(_)) {
        panic!("the listener panics (on purpose)");
    }
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_waiter_whose_listener_panics_gives_its_slot_back() {
    let bulkhead = Bulkhead::builder(1)
        .max_queue(4)
        .on_event(panics_when_waited)
        .build()
        .unwrap();
    for round in 0..3 {
        let held = bulkhead.try_acquire_owned().unwrap();
        let waiter = tokio::spawn({
            let bulkhead = bulkhead.clone();
            async move { bulkhead.acquire_owned(Deadline::none()).await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(bulkhead.queued(), 1, "round {round}");
        drop(held);
        let panicked = waiter.await.unwrap_err();
        assert!(panicked.is_panic(), "round {round}");
        assert_eq!(
            (
                bulkhead.available(),
                bulkhead.in_flight(),
                bulkhead.queued()
            ),
            (1, 0, 0),
            "round {round}: the granted slot came back"
        );
    }
}

/// Inside a pipeline, where the bulkhead's wait is a stage: the panic goes to the caller and
/// the capacity stays whole.
#[tokio::test(start_paused = true)]
async fn a_pipeline_bulkhead_whose_listener_panics_loses_no_capacity() {
    let bulkhead = Bulkhead::builder(2)
        .max_queue(8)
        .on_event(panics_when_waited)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap();
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let pipeline = pipeline.clone();
            tokio::spawn(async move {
                pipeline
                    .call(|| async {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Ok::<_, ()>(())
                    })
                    .await
            })
        })
        .collect();
    let mut panicked = 0;
    for call in calls {
        match call.await {
            Ok(result) => result.unwrap(),
            Err(e) => {
                assert!(e.is_panic());
                panicked += 1;
            }
        }
    }
    assert_eq!(
        panicked, 4,
        "the two admitted at once ran; the four that waited panicked"
    );
    assert_eq!((bulkhead.available(), bulkhead.in_flight()), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn an_adaptive_waiter_whose_listener_panics_gives_its_slot_back() {
    let aimd = Aimd::builder()
        .min_limit(1)
        .initial_limit(1)
        .max_limit(1)
        .build()
        .unwrap();
    let limiter = AdaptiveLimiter::builder(aimd)
        .max_queue(4)
        .on_event(panics_when_waited)
        .build()
        .unwrap();
    let held = limiter.try_admit().unwrap();
    let waiter = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.admit(Wait::Until(Deadline::none())).await.map(drop) }
    });
    tokio::task::yield_now().await;
    assert_eq!(limiter.queued(), 1);
    drop(held);
    assert!(waiter.await.unwrap_err().is_panic());
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
    assert!(limiter.try_admit().is_some(), "the one slot is free again");
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_outcome_listener_panics_gives_its_slot_back() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(1))
        .max_half_open_wait(None)
        .on_event(|event: &Event<'_>| {
            if matches!(event.kind, EventKind::Succeeded) {
                panic!("the listener panics (on purpose)");
            }
        })
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probe = breaker.try_acquire().unwrap();
    assert!(probe.is_probe());
    let told = std::panic::catch_unwind(AssertUnwindSafe(|| probe.success()));
    assert!(told.is_err());
    // The success was never recorded (its listener panicked first): the breaker is still
    // half-open, and its one probe slot is free for the next caller.
    assert_eq!(breaker.state(), State::HalfOpen);
    let next = breaker.try_acquire().expect("the probe slot came back");
    assert!(next.is_probe());
    next.failure();
    assert_eq!(breaker.state(), State::Open);
}

/// The same probe through a pipeline: the call panics, and the breaker can still close.
#[tokio::test(start_paused = true)]
async fn a_pipeline_probe_whose_listener_panics_leaves_the_breaker_usable() {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(1))
        .max_half_open_wait(None)
        .on_event({
            let armed = AtomicBool::new(true);
            move |event: &Event<'_>| {
                if matches!(event.kind, EventKind::Succeeded) && armed.swap(false, SeqCst) {
                    panic!("the listener panics once (on purpose)");
                }
            }
        })
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .breaker(breaker.clone())
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let call = AssertUnwindSafe(pipeline.call(|| async { Ok::<_, ()>(1) }))
        .catch_unwind()
        .await;
    assert!(call.is_err(), "the listener's panic reaches the caller");
    assert_eq!(pipeline.call(|| async { Ok::<_, ()>(2) }).await, Ok(2));
    assert_eq!(breaker.state(), State::Closed);
}

/// Docs (`KeyedCircuitBreaker::reconfigure`): "A listener that panics on one key's event does
/// not leave the keys after it on the old policy: every key takes the new one, then the first
/// such panic goes on to the caller." A new window shape resets every key, and the listener
/// panics on the first reset (review r21: the keys after it kept the old window).
#[tokio::test(start_paused = true)]
async fn a_keyed_reconfigure_whose_listener_panics_reaches_every_key() {
    let per_host = CircuitBreaker::builder()
        .on_state_change(|change| {
            if change.to == State::Closed {
                panic!("the listener panics (on purpose)");
            }
        })
        .keyed()
        .build()
        .unwrap();
    for host in ["a", "b", "c"] {
        let _ = per_host.call(&host, || async { Ok::<_, ()>(()) }).await;
    }
    let reconfigured = std::panic::catch_unwind(AssertUnwindSafe(|| {
        per_host.reconfigure(
            CircuitBreaker::builder().window(tidewall::breaker::Window::Count { calls: 150 }),
        )
    }));
    assert!(
        reconfigured.is_err(),
        "the listener's panic reaches the caller"
    );
    for host in ["a", "b", "c"] {
        let window = per_host.get(&host).unwrap().policy().window();
        assert_eq!(
            window,
            tidewall::breaker::Window::Count { calls: 150 },
            "{host}"
        );
    }
}

/// A state-change listener that panics still lets `on_event` hear the change it was told of
/// (the state has changed either way), and the panic goes on to the call that made it.
/// (Audit s36: the change was then never passed on, counted nor traced.)
#[test]
fn a_panicking_state_change_listener_does_not_hide_the_change_from_on_event() {
    let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&told);
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .on_state_change(|_| panic!("the state-change listener panics (on purpose)"))
        .on_event(move |event: &Event<'_>| {
            if let EventKind::StateChanged(change) = &event.kind {
                log.lock().unwrap().push(change.to);
            }
        })
        .build()
        .unwrap();
    let permit = breaker.try_acquire().unwrap();
    let failed = std::panic::catch_unwind(AssertUnwindSafe(|| permit.failure()));
    assert!(failed.is_err(), "the listener's panic reaches the caller");
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(*told.lock().unwrap(), [State::Open]);
}
