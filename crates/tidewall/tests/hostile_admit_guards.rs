//! Hostile black-box tests of who holds an `AdmitLayer` stage's guard, and for how long, written
//! from the rustdoc alone: clones, `into_inner`, calls without `poll_ready`, services and
//! response futures dropped while queued, granted or running, FIFO order, and the rate a
//! limited layer keeps under seeded random cancellation. The shared services, pollers and
//! storms are in `admit_support`.

mod admit_support;
mod common;
mod support;

use std::future::poll_fn;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use admit_support::{Poller, Work, bulkhead, mode_seed, settle, storm};
use common::ms;
use support::{HOUR, Rng, assert_conserved};
use tidewall::bulkhead::Bulkhead;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::testing::{Clocked, FakeClock};
use tidewall::tower::{AdmitLayer, AdmitMode};
use tidewall::{Error, Rejected};
use tower_layer::Layer;
use tower_service::Service;

// === guards: held while admitted, given back once ==========================================

// Docs (`AdmitService`): "A clone shares the stage and starts with nothing admitted."
// (`WaitReady`): "the guard taken there (a bulkhead slot) is held until the call's response
// future completes".
async fn clones_share_the_stage<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = bulkhead(&rt, 1, None);
    let mut a = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        .runtime(rt.clone())
        .layer(Work::new(&rt));
    poll_fn(|cx| a.poll_ready(cx)).await.unwrap();
    assert_eq!(bulkhead.available(), 0);
    let mut b = a.clone();
    {
        let mut ready_b = pin!(poll_fn(|cx| b.poll_ready(cx)));
        assert!(
            futures_util::poll!(ready_b.as_mut()).is_pending(),
            "the clone holds nothing: it waits for the slot"
        );
        assert_eq!(bulkhead.queued(), 1);
        assert_eq!(a.call(4).await, Ok(4));
        assert_eq!(ready_b.await, Ok(()), "the slot went to the clone");
    }
    assert_eq!(bulkhead.available(), 0, "the clone holds it now");
    let c = b.clone();
    assert_eq!(bulkhead.available(), 0, "cloning takes nothing");
    drop(b);
    assert_eq!(
        bulkhead.available(),
        1,
        "dropping the service released its slot"
    );
    drop((a, c));
    assert_conserved(&bulkhead);

    // WaitCall clones: the second call waits for the first one's slot.
    let work = Work::new(&rt);
    let mut x = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitCall)
        .runtime(rt.clone())
        .layer(work.clone());
    let mut y = x.clone();
    let start = rt.now();
    let first = x.call(30);
    let second = y.call(20);
    let (r1, r2) = futures_util::future::join(first, second).await;
    assert_eq!((r1, r2), (Ok(30), Ok(20)));
    assert_eq!(rt.now() - start, ms(50), "one after the other");
    assert_eq!(work.gauge.most(), 1);
    drop((x, y));
    assert_conserved(&bulkhead);
}

#[test]
fn clones_of_an_admit_service_share_one_stage_and_start_with_nothing_admitted_on_every_runtime() {
    on_every_runtime!(clones_share_the_stage);
}

// Docs (`AdmitService::into_inner`): "The inner service; a guard admitted in poll_ready is
// released." (`get_ref`, `get_mut`, `admission`).
async fn into_inner_releases<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = bulkhead(&rt, 2, None);
    let work = Work::new(&rt);
    let mut svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        .runtime(rt.clone())
        .layer(work.clone());
    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    assert_eq!(svc.admission().available(), 1);
    assert_eq!(svc.get_ref().calls(), 0);
    assert_eq!(
        svc.get_mut().call(2).await,
        Ok(2),
        "the inner service itself"
    );
    assert_eq!(
        bulkhead.available(),
        1,
        "the slot is still held by the service"
    );
    let mut inner = svc.into_inner();
    assert_eq!(bulkhead.available(), 2, "into_inner released the slot");
    assert_eq!(inner.call(0).await, Ok(0));
    assert_eq!(work.calls(), 2);
    assert_conserved(&bulkhead);
}

#[test]
fn into_inner_releases_the_slot_taken_in_poll_ready_on_every_runtime() {
    on_every_runtime!(into_inner_releases);
}

// Docs (`AdmitLayer`): "Admits each call through an Admission stage before the inner service
// sees it". A call made without poll_ready must not slip past the stage.
async fn call_without_poll_ready<R: Runtime>(rt: Clocked<R>) {
    for mode in [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall] {
        let bulkhead = bulkhead(&rt, 2, None);
        let work = Work::new(&rt);
        let svc = AdmitLayer::new(bulkhead.clone(), mode)
            .runtime(rt.clone())
            .layer(work.clone());
        let mut handles = Vec::new();
        for i in 0..6u64 {
            let mut svc = svc.clone();
            handles.push(rt.spawn(async move { svc.call(10 + 2 * i).await }));
        }
        let mut oks = 0;
        for handle in handles {
            match handle.await.unwrap() {
                Ok(_) => oks += 1,
                Err(Error::Rejected(Rejected::BulkheadFull)) => {}
                Err(e) => panic!("{mode:?}: {e:?}"),
            }
        }
        assert!(
            work.gauge.most() <= 2,
            "{mode:?}: {} calls ran at once through a bulkhead of 2",
            work.gauge.most()
        );
        if mode == AdmitMode::WaitCall {
            assert_eq!(oks, 6, "every call waits for its turn");
        }
        drop(svc);
        assert_conserved(&bulkhead);
    }
}

#[test]
fn a_call_without_poll_ready_never_slips_past_the_stage_in_any_mode_on_every_runtime() {
    on_every_runtime!(call_without_poll_ready);
}

// Docs (admit `ResponseFuture`): "Cancel safety: dropping it drops the pending admission
// (leaving a bulkhead's queue) or the guard (freeing the slot); nothing is held afterwards."
// (`AdmitService`): keeps "the stage's guard and pending wait between poll_ready and call".
async fn admit_mode_storm<R: Runtime>(rt: Clocked<R>, mode: AdmitMode, seed: u64) {
    let mut rng = Rng::new(seed);
    for bound in [
        None,
        Some(Duration::ZERO),
        Some(ms(25)),
        Some(Duration::MAX),
    ] {
        let bulkhead = bulkhead(&rt, 3, Some(ms(40)));
        let work = Work::new(&rt);
        let layer = AdmitLayer::new(bulkhead.clone(), mode).runtime(rt.clone());
        let layer = match bound {
            Some(bound) => layer.max_wait(bound),
            None => layer,
        };
        let svc = layer.layer(work.clone());
        storm(&rt, &svc, &mut rng, 80).await;
        drop(svc);
        assert_eq!(work.gauge.now(), 0, "{mode:?} {bound:?}");
        assert!(
            work.gauge.most() <= 3,
            "{mode:?} {bound:?}: {} at once through a bulkhead of 3",
            work.gauge.most()
        );
        assert_conserved(&bulkhead);
    }
}

#[test]
fn reject_mode_conserves_capacity_when_services_and_futures_drop_at_random_on_every_runtime() {
    on_every_runtime!(|rt| admit_mode_storm(rt, AdmitMode::Reject, 0x5EED_0001));
}

#[test]
fn wait_ready_mode_conserves_capacity_when_waits_services_and_futures_drop_at_random_on_every_runtime()
 {
    on_every_runtime!(|rt| admit_mode_storm(rt, AdmitMode::WaitReady, 0x5EED_0002));
}

#[test]
fn wait_call_mode_conserves_capacity_when_services_and_futures_drop_at_random_on_every_runtime() {
    on_every_runtime!(|rt| admit_mode_storm(rt, AdmitMode::WaitCall, 0x5EED_0003));
}

// Docs (admit `ResponseFuture` and `AdmitService`), checked step by step on a FakeClock: a
// service waiting in poll_ready that is dropped leaves the queue and its timer; one dropped
// after its slot was granted but before it was polled again passes the slot on.
#[test]
fn a_wait_ready_service_dropped_while_queued_or_granted_but_unpolled_leaks_nothing() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = Bulkhead::builder(1)
        .max_queue(4)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let work = Work::new(&clock);
    let layer = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        .runtime(clock.clone())
        .max_wait(Duration::from_secs(1));

    let held = bulkhead.try_acquire_owned().unwrap();
    let mut a = layer.layer(work.clone());
    let mut b = layer.layer(work.clone());
    assert!(poller.ready(&mut a).is_pending());
    assert!(poller.ready(&mut b).is_pending());
    assert_eq!(bulkhead.queued(), 2);
    drop(a);
    assert_eq!(bulkhead.queued(), 1, "a dropped waiter leaves the queue");
    drop(held); // granted to b, which is not polled
    drop(b);
    assert_eq!(bulkhead.available(), 1, "b's granted slot came back");
    assert_eq!(bulkhead.queued(), 0);
    assert_eq!(clock.pending_timers(), 0, "no timer outlives its service");
    assert_eq!(bulkhead.rejected(), 0);

    // Granted to a dropped waiter: passed to the next one.
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut a = layer.layer(work.clone());
    let mut b = layer.layer(work.clone());
    assert!(poller.ready(&mut a).is_pending());
    assert!(poller.ready(&mut b).is_pending());
    drop(held);
    drop(a);
    assert_eq!(poller.ready(&mut b), Poll::Ready(Ok(())));
    assert_eq!(bulkhead.available(), 0);
    // Ready, then idle for hours, then called: the slot is held throughout, released after.
    clock.advance(5 * HOUR);
    let mut call = pin!(b.call(2));
    let out = settle(&clock, &poller, clock.now() + HOUR, |cx| {
        call.as_mut().poll(cx)
    });
    assert_eq!(out, Some(Ok(2)));
    assert_eq!(bulkhead.available(), 1);
    drop(b);
    assert_eq!(work.gauge.now(), 0);
    assert_conserved(&bulkhead);
}

#[test]
fn a_wait_call_response_future_dropped_while_queued_granted_or_running_leaks_nothing() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = Bulkhead::builder(1)
        .max_queue(4)
        .max_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let work = Work::new(&clock);
    let mut svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitCall)
        .runtime(clock.clone())
        .max_wait(Duration::from_secs(1))
        .layer(work.clone());

    // Queued, dropped.
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut call = Box::pin(svc.call(10));
    assert!(poller.poll(call.as_mut()).is_pending());
    assert_eq!(bulkhead.queued(), 1);
    drop(call);
    assert_eq!(bulkhead.queued(), 0);
    assert_eq!(clock.pending_timers(), 0);
    assert_eq!(work.calls(), 0);
    assert_eq!(
        bulkhead.rejected(),
        0,
        "a dropped call is not a refused one"
    );

    // Granted while unpolled, dropped.
    let mut call = Box::pin(svc.call(10));
    assert!(poller.poll(call.as_mut()).is_pending());
    drop(held);
    drop(call);
    assert_eq!(bulkhead.available(), 1);
    assert_eq!(work.calls(), 0);

    // Admitted and running, dropped.
    let mut call = Box::pin(svc.call(10));
    assert!(poller.poll(call.as_mut()).is_pending());
    assert_eq!(work.gauge.now(), 1);
    assert_eq!(bulkhead.available(), 0);
    drop(call);
    assert_eq!(work.gauge.now(), 0);
    assert_eq!(bulkhead.available(), 1);
    assert_eq!(clock.pending_timers(), 0);
    drop(svc);
    assert_conserved(&bulkhead);
}

// === FIFO among waiting services and calls =================================================

// Docs (bulkhead): "Fairness: FIFO among waiters." Services waiting in poll_ready and calls
// waiting in their response futures share one queue.
#[test]
fn services_and_calls_waiting_on_one_bulkhead_are_admitted_first_in_first_out() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = bulkhead(&clock, 1, None);
    let work = Work::new(&clock);
    let ready_layer =
        AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady).runtime(clock.clone());
    let mut call_svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitCall)
        .runtime(clock.clone())
        .layer(work.clone());
    let held = bulkhead.try_acquire_owned().unwrap();
    let mut a = ready_layer.layer(work.clone());
    assert!(poller.ready(&mut a).is_pending());
    let mut b = Box::pin(call_svc.call(0));
    assert!(poller.poll(b.as_mut()).is_pending());
    let mut c = ready_layer.layer(work.clone());
    assert!(poller.ready(&mut c).is_pending());
    assert_eq!(bulkhead.queued(), 3);
    drop(held);
    // Polled in the wrong order on purpose: only the first in line gets the slot.
    assert!(poller.ready(&mut c).is_pending(), "c is third");
    assert!(poller.poll(b.as_mut()).is_pending(), "b is second");
    assert_eq!(poller.ready(&mut a), Poll::Ready(Ok(())), "a is first");
    drop(a); // ready, never called: the slot moves on
    assert!(poller.ready(&mut c).is_pending(), "c is still behind b");
    assert_eq!(poller.poll(b.as_mut()), Poll::Ready(Ok(0)), "b is next");
    drop(b);
    assert_eq!(poller.ready(&mut c), Poll::Ready(Ok(())), "then c");
    drop(c);
    assert_conserved(&bulkhead);
}

// === the limiter under random cancellation =================================================

// Docs (`RateLimiter`): "count per period, bursts of burst"; (tower): "the rate limiter (GCRA,
// shared by clones, no window-edge double bursts)". Calls reach the service at once when
// admitted (Reject, WaitCall), so over any span no more than `burst + span / interval` of them
// may start, whatever is cancelled.
async fn limiter_storm<R: Runtime>(rt: Clocked<R>, mode: AdmitMode) {
    let limiter = RateLimiter::builder(1_000, Duration::from_secs(1))
        .burst(4)
        .seed(0x11A1)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let work = Work::new(&rt);
    let svc = AdmitLayer::new(limiter, mode)
        .runtime(rt.clone())
        .max_wait(ms(30))
        .layer(work.clone());
    let mut rng = Rng::new(0x6C_4A ^ mode_seed(mode));
    storm(&rt, &svc, &mut rng, 200).await;
    let starts = work.starts();
    assert!(starts.len() > 20, "{mode:?}: {} calls", starts.len());
    let interval = ms(1);
    for (i, first) in starts.iter().enumerate() {
        for (j, last) in starts.iter().enumerate().skip(i) {
            let span = *last - *first;
            let allowed = 4 + span.as_nanos() / interval.as_nanos();
            let started = u128::try_from(j - i + 1).unwrap();
            assert!(
                started <= allowed,
                "{mode:?}: {started} calls started within {span:?}, at most {allowed} allowed"
            );
        }
    }
}

#[test]
fn a_rate_limited_admit_layer_never_exceeds_its_rate_under_random_cancellation_on_every_runtime() {
    for mode in [AdmitMode::Reject, AdmitMode::WaitCall] {
        on_every_runtime!(|rt| limiter_storm(rt, mode));
    }
}
