//! Bulkhead scenarios: reject or wait, FIFO, deadlines, and cancellation storms.

mod common;

use common::ms;

use std::time::Duration;

use futures_util::FutureExt as _;
use tidewall::bulkhead::Bulkhead;
use tidewall::rt::{Clock, Runtime, Spawn, Tokio};
use tidewall::testing::Clocked;
use tidewall::{Deadline, Rejected};

async fn admit_queue_reject_and_time_out<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(2)
        .max_queue(2)
        .max_wait(ms(100))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let a = bulkhead.acquire().await.unwrap();
    let b = bulkhead.acquire().await.unwrap();
    assert_eq!(bulkhead.in_flight(), 2);
    let start = rt.now();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..2 {
        let (shared, order, clock) = (bulkhead.clone(), order.clone(), rt.clone());
        waiters.push(rt.spawn(async move {
            let permit = shared.acquire().await;
            order.lock().unwrap().push(i);
            // Hold the slot for a while.
            clock.sleep(ms(500)).await;
            permit.map(drop)
        }));
        // Enqueue one at a time, so the arrival order is known.
        while bulkhead.queued() < i + 1 {
            rt.sleep(ms(1)).await;
        }
    }
    // Queue full: the next caller is rejected at once, and counted.
    assert_eq!(
        bulkhead.acquire().await.unwrap_err(),
        Rejected::BulkheadFull
    );
    assert_eq!(bulkhead.rejected(), 1);
    drop(a);
    while order.lock().unwrap().is_empty() {
        rt.sleep(ms(1)).await;
    }
    assert_eq!(
        *order.lock().unwrap(),
        [0],
        "FIFO: the first waiter got the freed slot"
    );
    // The second waiter still waits on `b`'s slot... until its max wait runs out.
    rt.sleep(ms(200)).await;
    assert_eq!(order.lock().unwrap().len(), 2);
    assert_eq!(bulkhead.rejected(), 2, "the second waiter timed out");
    assert!(rt.now() - start >= ms(100));
    drop(b);
    let results: Vec<_> = futures_util::future::join_all(waiters).await;
    assert_eq!(
        results.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        [Ok(()), Err(Rejected::BulkheadFull)]
    );
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
}

#[test]
fn admits_queues_rejects_and_times_out_on_every_runtime() {
    on_every_runtime!(admit_queue_reject_and_time_out);
}

async fn deadline_cuts_the_wait<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(1)
        .max_wait(ms(1_000))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let _held = bulkhead.try_acquire().unwrap();
    let start = rt.now();
    let deadline = Deadline::after(&rt, ms(30));
    assert_eq!(
        bulkhead.acquire_before(deadline).await.unwrap_err(),
        Rejected::DeadlineExceeded
    );
    assert_eq!(rt.now() - start, ms(30));
    assert_eq!(
        bulkhead.acquire_before(deadline).await.unwrap_err(),
        Rejected::DeadlineExceeded
    );
    assert_eq!(bulkhead.queued(), 0);
}

#[test]
fn the_deadline_cuts_a_wait_short_on_every_runtime() {
    on_every_runtime!(deadline_cuts_the_wait);
}

#[test]
fn reject_when_full_never_queues() {
    let bulkhead = Bulkhead::builder(1)
        .reject_when_full()
        .runtime(Clocked::new(Tokio))
        .build()
        .unwrap();
    let _held = bulkhead.try_acquire().unwrap();
    assert!(matches!(
        bulkhead.acquire().now_or_never(),
        Some(Err(Rejected::BulkheadFull))
    ));
    assert_eq!(bulkhead.queued(), 0);
}

#[test]
fn bad_configuration_is_a_typed_error() {
    use tidewall::ConfigError;
    assert_eq!(
        Bulkhead::builder(0).build().unwrap_err(),
        ConfigError::Zero {
            field: "max_concurrent"
        }
    );
    assert_eq!(
        Bulkhead::builder(1)
            .max_wait(Duration::ZERO)
            .build()
            .unwrap_err(),
        ConfigError::Zero { field: "max_wait" }
    );
    assert_eq!(
        Bulkhead::builder(1)
            .max_wait(Duration::MAX)
            .build()
            .unwrap_err(),
        ConfigError::DurationOverflow { field: "max_wait" }
    );
}

/// 100k random operations — acquire, poll once, drop a waiter, drop a permit — on one
/// thread: afterwards every slot is free and the queue is empty.
#[test]
fn cancellation_storm_leaks_nothing() {
    let bulkhead = Bulkhead::builder(4)
        .max_queue(16)
        .max_wait(None)
        .runtime(Clocked::new(Tokio))
        .build()
        .unwrap();
    let mut rng = tidewall_core::rng::SplitMix64::new(7);
    let mut permits = Vec::new();
    let mut waiters = Vec::new();
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    for _ in 0..100_000 {
        match rng.below_or_equal(3) {
            0 => waiters.push(Box::pin(bulkhead.acquire())),
            1 if !waiters.is_empty() => {
                let i = usize::try_from(rng.below_or_equal(waiters.len() as u64 - 1)).unwrap();
                if let std::task::Poll::Ready(result) = waiters[i].as_mut().poll(&mut cx) {
                    drop(waiters.swap_remove(i));
                    if let Ok(permit) = result {
                        permits.push(permit);
                    }
                }
            }
            2 if !waiters.is_empty() => {
                let i = usize::try_from(rng.below_or_equal(waiters.len() as u64 - 1)).unwrap();
                drop(waiters.swap_remove(i));
            }
            _ if !permits.is_empty() => {
                let i = usize::try_from(rng.below_or_equal(permits.len() as u64 - 1)).unwrap();
                drop(permits.swap_remove(i));
            }
            _ => {}
        }
        assert!(bulkhead.in_flight() <= 4);
        assert!(bulkhead.queued() <= 16);
    }
    // Futures still holding a granted-but-unobserved permit give it back on drop.
    waiters.clear();
    permits.clear();
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
    let all: Vec<_> = (0..4).map(|_| bulkhead.try_acquire().unwrap()).collect();
    assert!(bulkhead.try_acquire().is_err());
    drop(all);
}

/// Many threads acquiring, abandoning and releasing at once.
#[test]
fn concurrent_stress_returns_every_permit() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .build()
        .unwrap();
    let bulkhead = Bulkhead::builder(3)
        .max_queue(64)
        .max_wait(None)
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..8u64)
            .map(|seed| {
                let bulkhead = bulkhead.clone();
                tokio::spawn(async move {
                    let mut rng = tidewall_core::rng::SplitMix64::new(seed);
                    for _ in 0..5_000 {
                        if rng.below_or_equal(1) == 0 {
                            // Abandon the wait if it is not immediately ready.
                            drop(bulkhead.acquire().now_or_never());
                        } else {
                            let permit = bulkhead.acquire().await.unwrap();
                            tokio::task::yield_now().await;
                            drop(permit);
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
    // Exactly the capacity is free again: no permit lost, none duplicated.
    let all: Vec<_> = (0..3).map(|_| bulkhead.try_acquire().unwrap()).collect();
    assert!(bulkhead.try_acquire().is_err());
    drop(all);
}
