//! Load shedding: priorities and queue disciplines on the adaptive limiter (and the bulkhead
//! engine under it), in virtual time. Sheddable calls are refused first as the limit nears;
//! the queue serves the most important first and sheds the newest of the least important to
//! make room; LIFO serves the newest; CoDel bounds the wait once the queue stands. Nothing is
//! lost: every permit and queue place comes back, whatever is dropped when.
#![cfg(all(feature = "tokio", feature = "test-util", feature = "tower"))]

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use common::ms;
use futures_util::task::noop_waker_ref;
use tidewall::adaptive::{AdaptiveLimiter, FixedLimit, Priority, QueueDiscipline};
use tidewall::admission::{Admission, Wait};
use tidewall::bulkhead::Bulkhead;
use tidewall::pipeline::Pipeline;
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::{Clocked, FakeClock};
use tidewall::{ConfigError, Deadline, Error, Rejected};
use tidewall_core::rng::SplitMix64;

fn limiter(limit: u32, queue: usize, clock: &FakeClock) -> AdaptiveLimiter<FixedLimit, FakeClock> {
    AdaptiveLimiter::builder(FixedLimit(limit))
        .max_queue(queue)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap()
}

type Waiting<T> = Pin<Box<dyn Future<Output = Result<T, Rejected>> + Send>>;

/// Polls once: the future must be waiting (queued).
fn queued<T>(future: impl Future<Output = Result<T, Rejected>> + Send + 'static) -> Waiting<T> {
    let mut future: Waiting<T> = Box::pin(future);
    let mut cx = Context::from_waker(noop_waker_ref());
    assert!(future.as_mut().poll(&mut cx).is_pending(), "it should wait");
    future
}

fn poll<T>(future: &mut Waiting<T>) -> Poll<Result<T, Rejected>> {
    future
        .as_mut()
        .poll(&mut Context::from_waker(noop_waker_ref()))
}

fn admit_as(
    limiter: &AdaptiveLimiter<FixedLimit, FakeClock>,
    priority: Priority,
) -> Waiting<tidewall::adaptive::AdaptivePermit<FixedLimit, FakeClock>> {
    queued(
        limiter
            .with_priority(priority)
            .admit(Wait::Until(Deadline::none())),
    )
}

#[test]
fn sheddable_calls_are_refused_first_as_the_limit_nears() {
    let clock = FakeClock::new();
    let limiter = AdaptiveLimiter::builder(FixedLimit(10))
        .share(Priority::Default, 0.9)
        .share(Priority::Sheddable, 0.5)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let critical = limiter.with_priority(Priority::Critical);
    let sheddable = limiter.with_priority(Priority::Sheddable);
    assert_eq!(
        (critical.priority(), limiter.priority()),
        (Priority::Critical, Priority::Default)
    );
    let mut held = Vec::new();
    // Sheddable calls fill half the limit: 5.
    while let Ok(permit) = sheddable.try_acquire() {
        held.push(permit);
    }
    assert_eq!(held.len(), 5);
    // Default calls go on to 9 of 10, critical ones to the whole limit.
    while let Ok(permit) = limiter.try_acquire() {
        held.push(permit);
    }
    assert_eq!(held.len(), 9);
    held.push(
        critical
            .try_acquire()
            .expect("critical calls have the whole limit"),
    );
    assert_eq!(critical.try_acquire().unwrap_err(), Rejected::BulkheadFull);
    // As calls end, each priority is admitted again only below its share.
    held.truncate(5);
    assert_eq!(limiter.in_flight(), 5);
    assert!(
        sheddable.try_acquire().is_err(),
        "5 in flight: the sheddable share is used"
    );
    held.truncate(4);
    let again = sheddable.try_acquire().expect("4 < 5");
    drop((again, held));
    assert_eq!(limiter.in_flight(), 0);
}

/// The share is of the limit in force: `limit × share`, rounded so that a call is admitted
/// while fewer than that are in flight, and always when none are.
#[test]
fn a_share_admits_while_fewer_than_limit_times_share_are_in_flight() {
    let clock = FakeClock::new();
    for (limit, share, admitted) in [
        (5, 0.8, 4),
        (1, 0.01, 1),
        (3, 0.5, 2),
        (10, 0.8, 8),
        (100, 0.7, 70),
        (7, 1.0, 7),
        (1_000, 0.333, 333),
    ] {
        let limiter = AdaptiveLimiter::builder(FixedLimit(limit))
            .share(Priority::Default, share)
            .share(Priority::Sheddable, share)
            .runtime(clock.clone())
            .build()
            .unwrap();
        let held: Vec<_> = std::iter::from_fn(|| limiter.try_acquire().ok()).collect();
        assert_eq!(held.len(), admitted, "limit {limit}, share {share}");
    }
}

#[test]
fn the_queue_serves_the_most_important_first_and_fifo_within() {
    let clock = FakeClock::new();
    let limiter = limiter(1, 10, &clock);
    let first = limiter.try_acquire().unwrap();
    let mut shed_a = admit_as(&limiter, Priority::Sheddable);
    let mut default_a = admit_as(&limiter, Priority::Default);
    let mut critical = admit_as(&limiter, Priority::Critical);
    let mut default_b = admit_as(&limiter, Priority::Default);
    assert_eq!(limiter.queued(), 4);
    drop(first);
    let Poll::Ready(Ok(permit)) = poll(&mut critical) else {
        panic!("the critical waiter is served first");
    };
    assert!(poll(&mut default_a).is_pending());
    drop(permit);
    let Poll::Ready(Ok(permit)) = poll(&mut default_a) else {
        panic!("then the longest waiting default one");
    };
    drop(permit);
    let Poll::Ready(Ok(permit)) = poll(&mut default_b) else {
        panic!("then the next default one");
    };
    assert!(poll(&mut shed_a).is_pending());
    drop(permit);
    assert!(matches!(poll(&mut shed_a), Poll::Ready(Ok(_))));
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
}

/// A sheddable waiter is admitted only once the calls in flight fall below its share, even
/// if a permit is free before that.
#[test]
fn a_queued_sheddable_call_waits_for_its_share() {
    let clock = FakeClock::new();
    let limiter = AdaptiveLimiter::builder(FixedLimit(4))
        .share(Priority::Sheddable, 0.5)
        .max_queue(4)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let mut held: Vec<_> = (0..4).map(|_| limiter.try_acquire().unwrap()).collect();
    let mut sheddable = admit_as(&limiter, Priority::Sheddable);
    held.pop();
    assert!(
        poll(&mut sheddable).is_pending(),
        "3 in flight: not below 2"
    );
    held.pop();
    assert!(
        poll(&mut sheddable).is_pending(),
        "2 in flight: not below 2"
    );
    held.pop();
    assert!(
        matches!(poll(&mut sheddable), Poll::Ready(Ok(_))),
        "1 in flight"
    );
    drop(held);
}

#[test]
fn a_full_queue_sheds_its_newest_least_important_waiter_for_a_more_important_caller() {
    let clock = FakeClock::new();
    let limiter = limiter(1, 2, &clock);
    let first = limiter.try_acquire().unwrap();
    let mut old = admit_as(&limiter, Priority::Sheddable);
    let mut new = admit_as(&limiter, Priority::Sheddable);
    // Full: a sheddable caller gets no room from its equals...
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut refused = Box::pin(
        limiter
            .with_priority(Priority::Sheddable)
            .admit(Wait::Until(Deadline::none())),
    );
    assert!(matches!(
        refused.as_mut().poll(&mut cx),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
    // ...a default one pushes out the newest sheddable waiter.
    let mut default = admit_as(&limiter, Priority::Default);
    assert!(matches!(
        poll(&mut new),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
    assert_eq!(limiter.queued(), 2);
    drop(first);
    let Poll::Ready(Ok(permit)) = poll(&mut default) else {
        panic!("the default caller is served first");
    };
    assert!(poll(&mut old).is_pending());
    drop(permit);
    assert!(matches!(poll(&mut old), Poll::Ready(Ok(_))));
    drop((old, default));
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
}

#[test]
fn lifo_serves_the_newest_waiter_first() {
    let clock = FakeClock::new();
    let bulkhead = Bulkhead::builder(1)
        .max_queue(3)
        .max_wait(None)
        .discipline(QueueDiscipline::Lifo)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let first = bulkhead.try_acquire_owned().unwrap();
    let mut waiters: Vec<Waiting<_>> = (0..3)
        .map(|_| queued(bulkhead.acquire_owned(Deadline::none())))
        .collect();
    drop(first);
    let mut order = Vec::new();
    for _ in 0..3 {
        let (at, permit) = waiters
            .iter_mut()
            .enumerate()
            .find_map(|(i, w)| match poll(w) {
                Poll::Ready(Ok(permit)) => Some((i, permit)),
                _ => None,
            })
            .expect("one waiter was served");
        order.push(at);
        waiters[at] = Box::pin(std::future::pending());
        drop(permit);
    }
    assert_eq!(order, [2, 1, 0]);
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
}

/// CoDel: while the queue has been empty within the last `interval`, a caller waits up to
/// `max_wait`; once it has stood for `interval`, a caller who joins waits `target` at most.
#[test]
fn codel_cuts_the_wait_once_the_queue_stands() {
    let clock = FakeClock::new();
    let bulkhead = Bulkhead::builder(1)
        .max_queue(10)
        .max_wait(Duration::from_secs(1))
        .discipline(QueueDiscipline::Codel {
            target: ms(5),
            interval: ms(100),
        })
        .runtime(clock.clone())
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let start = clock.now();
    let mut patient = queued(bulkhead.acquire_owned(Deadline::none()));
    assert_eq!(clock.timer_deadlines(), [start + Duration::from_secs(1)]);
    clock.advance(ms(99));
    let mut also_patient = queued(bulkhead.acquire_owned(Deadline::none()));
    clock.advance(ms(1));
    // The queue has stood for 100 ms: the next caller waits 5 ms at most.
    let mut cut = queued(bulkhead.acquire_owned(Deadline::none()));
    let cut_at = clock.now() + ms(5);
    assert!(clock.timer_deadlines().contains(&cut_at));
    clock.advance(ms(5));
    assert_eq!(
        poll(&mut cut).map(|r| r.map(drop)),
        Poll::Ready(Err(Rejected::BulkheadFull))
    );
    assert!(
        poll(&mut patient).is_pending(),
        "the earlier callers keep their wait"
    );
    // The queue empties: the standing time starts over.
    drop(held);
    let Poll::Ready(Ok(a)) = poll(&mut patient) else {
        panic!("served");
    };
    drop(a);
    let Poll::Ready(Ok(b)) = poll(&mut also_patient) else {
        panic!("served");
    };
    assert_eq!(bulkhead.queued(), 0);
    let fresh_at = clock.now();
    let mut fresh = queued(bulkhead.acquire_owned(Deadline::none()));
    assert!(
        clock
            .timer_deadlines()
            .contains(&(fresh_at + Duration::from_secs(1)))
    );
    drop(b);
    assert!(matches!(poll(&mut fresh), Poll::Ready(Ok(_))));
    assert_eq!(bulkhead.in_flight(), 0);
}

#[test]
fn bad_shares_and_disciplines_are_typed_errors() {
    let build = |priority, share| {
        AdaptiveLimiter::builder(FixedLimit(4))
            .share(priority, share)
            .build()
            .map(drop)
    };
    for share in [0.0, -1.0, 1.5] {
        assert!(matches!(
            build(Priority::Sheddable, share),
            Err(ConfigError::OutOfRange {
                field: "sheddable_share",
                ..
            })
        ));
    }
    for share in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_eq!(
            build(Priority::Default, share),
            Err(ConfigError::NotFinite {
                field: "default_share"
            })
        );
    }
    assert!(matches!(
        build(Priority::Critical, 0.9),
        Err(ConfigError::Conflict { .. })
    ));
    assert!(matches!(
        AdaptiveLimiter::builder(FixedLimit(4))
            .share(Priority::Default, 0.5)
            .share(Priority::Sheddable, 0.6)
            .build(),
        Err(ConfigError::Conflict { .. })
    ));
    for (target, interval, field) in [
        (Duration::ZERO, ms(100), "target"),
        (ms(5), Duration::ZERO, "interval"),
    ] {
        let codel = QueueDiscipline::Codel { target, interval };
        assert_eq!(
            Bulkhead::builder(1).discipline(codel).build().map(drop),
            Err(ConfigError::Zero { field })
        );
        assert_eq!(
            AdaptiveLimiter::builder(FixedLimit(4))
                .discipline(codel)
                .build()
                .map(drop),
            Err(ConfigError::Zero { field })
        );
    }
    assert_eq!(
        Bulkhead::builder(1)
            .discipline(QueueDiscipline::Codel {
                target: Duration::MAX,
                interval: ms(1)
            })
            .build()
            .map(drop),
        Err(ConfigError::DurationOverflow { field: "target" })
    );
}

/// In a pipeline, one handle per class of calls: under a full limit, the sheddable pipeline
/// is refused while the default one still gets through, and a pipeline's deadline bounds a
/// queued sheddable call.
async fn pipelines_per_priority<R: Runtime + Clock>(rt: Clocked<R>) {
    let limiter = AdaptiveLimiter::builder(FixedLimit(4))
        .share(Priority::Sheddable, 0.5)
        .max_queue(8)
        .max_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = |priority| {
        Pipeline::builder()
            .runtime(rt.clone())
            .deadline(ms(50))
            .bulkhead(limiter.with_priority(priority))
            .build()
            .unwrap()
    };
    let (default, sheddable) = (pipeline(Priority::Default), pipeline(Priority::Sheddable));
    let held: Vec<_> = (0..3).map(|_| limiter.try_acquire().unwrap()).collect();
    let sheddable_result = sheddable.call(|| async { Ok::<_, ()>(1) }).await;
    assert_eq!(
        sheddable_result,
        Err(Error::Rejected(Rejected::DeadlineExceeded)),
        "3 of 4 in flight: queued until the deadline, never admitted"
    );
    assert_eq!(default.call(|| async { Ok::<_, ()>(2) }).await, Ok(2));
    drop(held);
    assert_eq!(sheddable.call(|| async { Ok::<_, ()>(3) }).await, Ok(3));
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
}

#[test]
fn pipelines_per_priority_on_every_runtime() {
    on_every_runtime!(pipelines_per_priority);
}

/// Threads of every priority taking and dropping permits, and waiting in a small queue with
/// drops at random points: no permit or place is lost, and never more than the limit is in
/// flight.
#[test]
fn threads_of_every_priority_lose_nothing() {
    let clock = FakeClock::new();
    let limiter = AdaptiveLimiter::builder(FixedLimit(6))
        .share(Priority::Default, 0.9)
        .share(Priority::Sheddable, 0.5)
        .max_queue(4)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let most = Arc::new(Mutex::new(0_usize));
    let threads: Vec<_> = (0..4_u64)
        .map(|t| {
            let (limiter, most) = (limiter.clone(), Arc::clone(&most));
            std::thread::spawn(move || {
                let mut rng = SplitMix64::new(0x2545_F491_4F6C_DD1D_u64 ^ (t + 1));
                let mut held = Vec::new();
                let mut waiting: Vec<Waiting<_>> = Vec::new();
                for _ in 0..20_000 {
                    let draw = rng.next_u64();
                    let priority = Priority::ALL[usize::try_from(draw % 3).unwrap()];
                    let handle = limiter.with_priority(priority);
                    match draw % 7 {
                        0 | 1 => {
                            if let Ok(permit) = handle.try_acquire() {
                                held.push(permit);
                            }
                        }
                        2 => {
                            let mut future: Waiting<_> =
                                Box::pin(handle.admit(Wait::Until(Deadline::none())));
                            match poll(&mut future) {
                                Poll::Ready(Ok(permit)) => held.push(permit),
                                Poll::Ready(Err(_)) => {}
                                Poll::Pending => waiting.push(future),
                            }
                        }
                        3 => {
                            // Drop a waiter at a random point: granted or not.
                            if !waiting.is_empty() {
                                let at = usize::try_from(draw % waiting.len() as u64).unwrap();
                                drop(waiting.swap_remove(at));
                            }
                        }
                        4 => {
                            waiting.retain_mut(|w| match poll(w) {
                                Poll::Ready(Ok(permit)) => {
                                    held.push(permit);
                                    false
                                }
                                Poll::Ready(Err(_)) => false,
                                Poll::Pending => true,
                            });
                        }
                        _ => {
                            if let Some(permit) = held.pop() {
                                if draw.is_multiple_of(2) {
                                    permit.success();
                                } else {
                                    drop(permit);
                                }
                            }
                        }
                    }
                    let now = limiter.in_flight();
                    let mut most = most.lock().unwrap();
                    *most = (*most).max(now);
                }
                drop(waiting);
                drop(held);
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
    assert!(*most.lock().unwrap() <= 6);
    // Everything came back: the whole limit is free again for critical calls.
    let critical = limiter.with_priority(Priority::Critical);
    let all: Vec<_> = (0..6).map(|_| critical.try_acquire().unwrap()).collect();
    assert!(critical.try_acquire().is_err());
    drop(all);
}

/// A priority per request under tower: one `AdmitLayer` per priority over the same limiter,
/// picked by `Steer`. In `WaitCall` mode a sheddable request waits for its share while a
/// critical one goes through; in `WaitReady` mode `Steer` readies every layer before it calls
/// one, which holds slots under each priority while nothing runs (why the docs rule that mode
/// out).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_tower_layer_per_priority_behind_steer() {
    use tidewall::tower::{AdmitLayer, AdmitMode};
    use tower::ServiceExt as _;
    use tower::steer::Steer;
    use tower_layer::Layer as _;
    use tower_service::Service as _;

    let limiter = AdaptiveLimiter::builder(FixedLimit(4))
        .share(Priority::Sheddable, 0.5)
        .max_queue(8)
        .max_wait(None)
        .build()
        .unwrap();
    let backend = tower::service_fn(|(_, n): (Priority, u32)| async move {
        tokio::time::sleep(ms(10)).await;
        Ok::<_, std::convert::Infallible>(n)
    })
    .map_err(Error::Inner);
    let steered = |mode| {
        let layers = Priority::ALL.map(|priority| {
            AdmitLayer::new(limiter.with_priority(priority), mode).layer(backend.clone())
        });
        Steer::new(layers, |(priority, _): &(Priority, u32), _: &[_]| {
            Priority::ALL.iter().position(|p| p == priority).unwrap()
        })
    };

    let mut service = steered(AdmitMode::WaitCall);
    let held: Vec<_> = (0..2).map(|_| limiter.try_acquire().unwrap()).collect();
    let sheddable = service
        .ready()
        .await
        .unwrap()
        .call((Priority::Sheddable, 1));
    let mut sheddable = Box::pin(sheddable);
    assert!(
        futures_util::poll!(sheddable.as_mut()).is_pending(),
        "2 of 4 in flight: the sheddable half is used, so it waits"
    );
    assert_eq!(limiter.queued(), 1);
    let critical = service
        .ready()
        .await
        .unwrap()
        .call((Priority::Critical, 2))
        .await;
    assert_eq!(
        critical.unwrap(),
        2,
        "critical requests have the whole limit"
    );
    drop(held);
    assert_eq!(
        sheddable.await.unwrap(),
        1,
        "admitted once its share is free"
    );
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));

    // Steer readies every layer before it calls one: critical and default take a slot each,
    // and the sheddable layer queues for a share two held slots have used up, so the service
    // is never ready and holds two slots meanwhile.
    let mut ready_mode = steered(AdmitMode::WaitReady);
    {
        let mut readying = std::pin::pin!(ready_mode.ready());
        assert!(futures_util::poll!(readying.as_mut()).is_pending());
    }
    assert_eq!(
        (limiter.in_flight(), limiter.queued()),
        (2, 1),
        "slots held under every priority while nothing runs"
    );
    drop(ready_mode);
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
}

/// "Callers already queued stay queued when the queue shrinks": a caller that finds the queue
/// over-full after a reconfigure is refused, and sheds nobody, since shedding one waiter would
/// not make room for it. Once the queue is back at its bound, shedding resumes.
#[test]
fn an_over_full_queue_sheds_nobody_for_a_caller_it_refuses() {
    let clock = FakeClock::new();
    let settings = |queue| {
        AdaptiveLimiter::builder(FixedLimit(1))
            .max_queue(queue)
            .max_wait(None)
            .runtime(clock.clone())
    };
    let limiter = settings(3).build().unwrap();
    let held = limiter.try_acquire().unwrap();
    let mut sheddable: Vec<_> = (0..3)
        .map(|_| admit_as(&limiter, Priority::Sheddable))
        .collect();
    assert_eq!(limiter.queued(), 3);
    limiter.reconfigure(settings(2)).unwrap();
    assert_eq!(limiter.queued(), 3, "queued callers stay queued");
    let mut critical = Box::pin(
        limiter
            .with_priority(Priority::Critical)
            .admit(Wait::Until(Deadline::none())),
    );
    let refused = critical
        .as_mut()
        .poll(&mut Context::from_waker(noop_waker_ref()));
    assert!(
        matches!(refused, Poll::Ready(Err(Rejected::BulkheadFull))),
        "3 queued, room for 2: refused"
    );
    assert_eq!(limiter.queued(), 3, "and nobody was shed for it");
    for waiter in &mut sheddable {
        assert!(poll(waiter).is_pending());
    }
    // One leaves: the queue is at its bound, so a critical caller now sheds the newest.
    drop(sheddable.pop());
    assert_eq!(limiter.queued(), 2);
    let mut critical = admit_as(&limiter, Priority::Critical);
    assert!(matches!(
        poll(&mut sheddable[1]),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
    assert_eq!(limiter.queued(), 2);
    drop(held);
    assert!(
        matches!(poll(&mut critical), Poll::Ready(Ok(_))),
        "served first"
    );
    drop((critical, sheddable));
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
}
