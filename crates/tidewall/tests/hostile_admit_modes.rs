//! Hostile black-box tests of the tower `AdmitLayer` in its three modes, written from the
//! rustdoc alone: what `Reject`, `WaitReady` and `WaitCall` refuse, when, and with which
//! reason; `max_wait` at zero, at `Duration::MAX` and to the nanosecond; repeated polls; hours
//! of idle time. The shared services, pollers and storms are in `admit_support`.

mod admit_support;
mod common;
mod support;

use std::future::poll_fn;
use std::pin::pin;
use std::time::Duration;

use admit_support::{Poller, Work, bulkhead, ready_and_call, settle};
use common::ms;
use support::{HOUR, assert_conserved};
use tidewall::bulkhead::Bulkhead;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::testing::{Clocked, FakeClock};
use tidewall::tower::{AdmitLayer, AdmitMode};
use tidewall::{Error, Rejected};
use tower_layer::Layer;
use tower_service::Service;

// === AdmitLayer ============================================================================

// Docs (`AdmitMode::Reject`): "the response future fails at once with the stage's own
// rejection (Rejected::BulkheadFull ...), and poll_ready stays ready". (`max_wait`): "No effect
// in AdmitMode::Reject." (`try_admit`): the fast path counts nothing; admit counts.
async fn reject_mode_on_a_full_bulkhead<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = bulkhead(&rt, 1, None);
    let work = Work::new(&rt);
    let mut svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::Reject)
        .runtime(rt.clone())
        .max_wait(Duration::from_secs(10))
        .layer(work.clone());
    let held = bulkhead.try_acquire_owned().unwrap();
    let start = rt.now();
    for i in 1..=4 {
        assert_eq!(
            poll_fn(|cx| svc.poll_ready(cx)).await,
            Ok(()),
            "ready while full"
        );
        assert_eq!(
            svc.call(2).await,
            Err(Error::Rejected(Rejected::BulkheadFull))
        );
        assert_eq!(
            bulkhead.rejected(),
            i,
            "exactly one rejection per refused call"
        );
    }
    assert_eq!(
        svc.call(2).await,
        Err(Error::Rejected(Rejected::BulkheadFull)),
        "without poll_ready too"
    );
    assert_eq!(bulkhead.rejected(), 5);
    assert_eq!(rt.now(), start, "shed at once: max_wait has no effect");
    assert_eq!(
        work.calls(),
        0,
        "the inner service never saw a refused call"
    );
    assert_eq!(bulkhead.queued(), 0);
    drop(held);
    assert_eq!(ready_and_call(&mut svc, 4).await, Ok(4));
    assert_eq!(bulkhead.rejected(), 5);
    drop(svc);
    assert_conserved(&bulkhead);
}

#[test]
fn reject_mode_refuses_a_full_bulkhead_with_bulkhead_full_counted_once_per_call_on_every_runtime() {
    on_every_runtime!(reject_mode_on_a_full_bulkhead);
}

// Docs (`AdmitMode::Reject`): "Rejected::RateLimited with its retry_after".
async fn reject_mode_on_a_spent_limiter<R: Runtime>(rt: Clocked<R>) {
    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .burst(2)
        .jitter(Duration::ZERO)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let mut svc = AdmitLayer::new(limiter, AdmitMode::Reject)
        .runtime(rt.clone())
        .layer(Work::new(&rt));
    assert_eq!(ready_and_call(&mut svc, 0).await, Ok(0));
    assert_eq!(ready_and_call(&mut svc, 0).await, Ok(0));
    assert_eq!(
        ready_and_call(&mut svc, 0).await,
        Err(Error::Rejected(Rejected::RateLimited {
            retry_after: ms(100)
        }))
    );
    rt.sleep(ms(40)).await;
    assert_eq!(
        ready_and_call(&mut svc, 0).await,
        Err(Error::Rejected(Rejected::RateLimited {
            retry_after: ms(60)
        }))
    );
    rt.sleep(ms(60)).await;
    assert_eq!(ready_and_call(&mut svc, 0).await, Ok(0));
}

#[test]
fn reject_mode_refuses_a_spent_limiter_with_its_exact_retry_after_on_every_runtime() {
    on_every_runtime!(reject_mode_on_a_spent_limiter);
}

// Docs (`max_wait`): "a stage that cannot admit in time refuses with
// Rejected::DeadlineExceeded"; (`Wait::Until`): the stage's own limits refuse with their
// reason; (`AdmitMode::WaitCall`): "poll_ready is the inner service's ... The inner service is
// called only once admitted."
async fn wait_call_deadlines<R: Runtime>(rt: Clocked<R>) {
    // The layer's bound comes first.
    let unbounded = bulkhead(&rt, 1, None);
    let work = Work::new(&rt);
    let mut svc = AdmitLayer::new(unbounded.clone(), AdmitMode::WaitCall)
        .runtime(rt.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let held = unbounded.try_acquire_owned().unwrap();
    let start = rt.now();
    assert_eq!(poll_fn(|cx| svc.poll_ready(cx)).await, Ok(()));
    assert_eq!(rt.now(), start, "poll_ready is the inner service's");
    assert_eq!(
        svc.call(0).await,
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    assert_eq!(rt.now() - start, ms(50));
    assert_eq!(unbounded.rejected(), 1);
    assert_eq!(unbounded.queued(), 0);

    // The bulkhead's own max_wait comes first.
    let bounded = bulkhead(&rt, 1, Some(ms(20)));
    let mut own = AdmitLayer::new(bounded.clone(), AdmitMode::WaitCall)
        .runtime(rt.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let held2 = bounded.try_acquire_owned().unwrap();
    let start = rt.now();
    assert_eq!(
        own.call(0).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(rt.now() - start, ms(20));
    assert_eq!(bounded.rejected(), 1);

    // A full queue refuses at once.
    let tight = Bulkhead::builder(1)
        .max_queue(1)
        .max_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let mut queued = AdmitLayer::new(tight.clone(), AdmitMode::WaitCall)
        .runtime(rt.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let held3 = tight.try_acquire_owned().unwrap();
    let mut first = pin!(queued.call(0));
    assert!(futures_util::poll!(first.as_mut()).is_pending());
    assert_eq!(tight.queued(), 1);
    let start = rt.now();
    assert_eq!(
        queued.call(0).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(rt.now(), start, "a full queue refuses at once");
    assert_eq!(tight.rejected(), 1);
    drop(held3);
    assert_eq!(first.await, Ok(0));
    assert_eq!(
        work.calls(),
        1,
        "only the admitted call reached the service"
    );
    drop((held, held2, svc, own, queued));
    assert_conserved(&unbounded);
    assert_conserved(&bounded);
    assert_conserved(&tight);
}

#[test]
fn wait_call_gives_deadline_exceeded_at_max_wait_and_the_stages_own_reason_at_its_limits_on_every_runtime()
 {
    on_every_runtime!(wait_call_deadlines);
}

// Docs (`max_wait`): "refuses with Rejected::DeadlineExceeded, at once when the wait is known
// to end later (a rate limiter's)".
async fn wait_call_on_a_limiter<R: Runtime>(rt: Clocked<R>) {
    let limiter = RateLimiter::builder(1, Duration::from_secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let work = Work::new(&rt);
    let mut short = AdmitLayer::new(limiter.clone(), AdmitMode::WaitCall)
        .runtime(rt.clone())
        .max_wait(ms(100))
        .layer(work.clone());
    let mut long = AdmitLayer::new(limiter, AdmitMode::WaitCall)
        .runtime(rt.clone())
        .max_wait(Duration::from_secs(2))
        .layer(work.clone());
    let start = rt.now();
    assert_eq!(ready_and_call(&mut short, 0).await, Ok(0));
    assert_eq!(
        ready_and_call(&mut short, 0).await,
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    assert_eq!(rt.now(), start, "known to end later: refused at once");
    assert_eq!(ready_and_call(&mut long, 0).await, Ok(0));
    assert_eq!(rt.now() - start, Duration::from_secs(1));
    assert_eq!(work.calls(), 2);
}

#[test]
fn wait_call_refuses_a_limiter_wait_past_max_wait_at_once_on_every_runtime() {
    on_every_runtime!(wait_call_on_a_limiter);
}

// Docs (`AdmitMode::WaitReady`): "the service is not ready until the stage admits"; "A wait
// the stage refuses ... is never a poll_ready error ...: poll_ready then reports ready and the
// next call fails at once with the refusal, without calling the inner service";
// (`max_wait`): "Bounds each wait (in poll_ready or in the call)".
async fn wait_ready_deadlines<R: Runtime>(rt: Clocked<R>) {
    let unbounded = bulkhead(&rt, 1, None);
    let work = Work::new(&rt);
    let mut svc = AdmitLayer::new(unbounded.clone(), AdmitMode::WaitReady)
        .runtime(rt.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let held = unbounded.try_acquire_owned().unwrap();
    let start = rt.now();
    assert_eq!(poll_fn(|cx| svc.poll_ready(cx)).await, Ok(()));
    assert_eq!(rt.now() - start, ms(50));
    assert_eq!(
        svc.call(0).await,
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    assert_eq!(rt.now() - start, ms(50), "the call fails at once");
    assert_eq!(unbounded.rejected(), 1);
    assert_eq!(unbounded.queued(), 0);

    let bounded = bulkhead(&rt, 1, Some(ms(20)));
    let mut own = AdmitLayer::new(bounded.clone(), AdmitMode::WaitReady)
        .runtime(rt.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let mut plain = AdmitLayer::new(bounded.clone(), AdmitMode::WaitReady)
        .runtime(rt.clone())
        .layer(work.clone());
    let held2 = bounded.try_acquire_owned().unwrap();
    for (svc, rejected) in [(&mut own, 1), (&mut plain, 2)] {
        let start = rt.now();
        assert_eq!(poll_fn(|cx| svc.poll_ready(cx)).await, Ok(()));
        assert_eq!(rt.now() - start, ms(20));
        assert_eq!(
            svc.call(0).await,
            Err(Error::Rejected(Rejected::BulkheadFull))
        );
        assert_eq!(bounded.rejected(), rejected);
    }
    assert_eq!(work.calls(), 0);
    drop((held, held2, svc, own, plain));
    assert_conserved(&unbounded);
    assert_conserved(&bounded);
}

#[test]
fn wait_ready_fails_the_call_at_max_wait_or_the_stages_own_limit_counted_once_on_every_runtime() {
    on_every_runtime!(wait_ready_deadlines);
}

// Docs (`max_wait`): "a stage that cannot admit in time refuses ... at once when the wait is
// known to end later"; (admission module): "take the synchronous fast path when it admits".
async fn zero_max_wait<R: Runtime>(rt: Clocked<R>) {
    for mode in [AdmitMode::WaitReady, AdmitMode::WaitCall] {
        let bulkhead = bulkhead(&rt, 1, None);
        let mut svc = AdmitLayer::new(bulkhead.clone(), mode)
            .runtime(rt.clone())
            .max_wait(Duration::ZERO)
            .layer(Work::new(&rt));
        let start = rt.now();
        assert_eq!(
            ready_and_call(&mut svc, 0).await,
            Ok(0),
            "{mode:?}: a free slot admits"
        );
        let held = bulkhead.try_acquire_owned().unwrap();
        assert_eq!(
            ready_and_call(&mut svc, 0).await,
            Err(Error::Rejected(Rejected::DeadlineExceeded)),
            "{mode:?}"
        );
        assert_eq!(rt.now(), start, "{mode:?}: no time to wait");
        assert_eq!(bulkhead.rejected(), 1, "{mode:?}");
        assert_eq!(bulkhead.queued(), 0, "{mode:?}");
        drop((held, svc));
        assert_conserved(&bulkhead);

        let limiter = RateLimiter::builder(10, Duration::from_secs(1))
            .burst(1)
            .jitter(Duration::ZERO)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let mut svc = AdmitLayer::new(limiter, mode)
            .runtime(rt.clone())
            .max_wait(Duration::ZERO)
            .layer(Work::new(&rt));
        assert_eq!(ready_and_call(&mut svc, 0).await, Ok(0), "{mode:?}");
        assert_eq!(
            ready_and_call(&mut svc, 0).await,
            Err(Error::Rejected(Rejected::DeadlineExceeded)),
            "{mode:?}"
        );
        assert_eq!(rt.now(), start);
    }
}

#[test]
fn a_max_wait_of_zero_admits_a_free_stage_and_refuses_a_full_one_at_once_on_every_runtime() {
    on_every_runtime!(zero_max_wait);
}

// Docs (`max_wait`): bounds each wait; (`rt::instant_after`): a duration too large for the
// clock saturates "instead of panicking".
async fn max_wait_of_duration_max<R: Runtime>(rt: Clocked<R>) {
    for mode in [AdmitMode::WaitReady, AdmitMode::WaitCall] {
        let bulkhead = bulkhead(&rt, 1, None);
        let mut svc = AdmitLayer::new(bulkhead.clone(), mode)
            .runtime(rt.clone())
            .max_wait(Duration::MAX)
            .layer(Work::new(&rt));
        let held = bulkhead.try_acquire_owned().unwrap();
        let clock = rt.clone();
        let release = rt.spawn(async move {
            clock.sleep(2 * HOUR).await;
            drop(held);
        });
        let start = rt.now();
        assert_eq!(ready_and_call(&mut svc, 0).await, Ok(0), "{mode:?}");
        assert_eq!(
            rt.now() - start,
            2 * HOUR,
            "{mode:?}: admitted at the release"
        );
        release.await.unwrap();
        assert_eq!(bulkhead.rejected(), 0, "{mode:?}");
        drop(svc);
        assert_conserved(&bulkhead);

        let limiter = RateLimiter::builder(1, Duration::from_secs(1))
            .burst(1)
            .jitter(Duration::ZERO)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let mut svc = AdmitLayer::new(limiter, mode)
            .runtime(rt.clone())
            .max_wait(Duration::MAX)
            .layer(Work::new(&rt));
        let start = rt.now();
        assert_eq!(ready_and_call(&mut svc, 0).await, Ok(0));
        assert_eq!(ready_and_call(&mut svc, 0).await, Ok(0));
        assert_eq!(rt.now() - start, Duration::from_secs(1), "{mode:?}");
    }
}

#[test]
fn a_max_wait_of_duration_max_waits_as_long_as_needed_without_overflowing_on_every_runtime() {
    on_every_runtime!(max_wait_of_duration_max);
}

// Docs (`AdmitMode::Reject`): the response future fails at once with the stage's rejection
// (the decision is the call's); (`WaitCall`): "poll_ready is the inner service's". Only
// WaitReady takes a guard in poll_ready: a shedding or call-waiting service that is merely
// ready holds no slot.
async fn readiness_takes_nothing_outside_wait_ready<R: Runtime>(rt: Clocked<R>) {
    for mode in [AdmitMode::Reject, AdmitMode::WaitCall] {
        let bulkhead = bulkhead(&rt, 1, None);
        let work = Work::new(&rt);
        let layer = AdmitLayer::new(bulkhead.clone(), mode).runtime(rt.clone());
        let mut idle = layer.layer(work.clone());
        poll_fn(|cx| idle.poll_ready(cx)).await.unwrap();
        assert_eq!(
            bulkhead.available(),
            1,
            "{mode:?}: a ready service holds no slot"
        );
        let mut busy = layer.layer(work.clone());
        assert_eq!(ready_and_call(&mut busy, 2).await, Ok(2), "{mode:?}");
        assert_eq!(ready_and_call(&mut idle, 2).await, Ok(2), "{mode:?}");
        drop((idle, busy));
        assert_conserved(&bulkhead);
    }
}

#[test]
fn only_wait_ready_takes_a_guard_in_poll_ready_on_every_runtime() {
    on_every_runtime!(readiness_takes_nothing_outside_wait_ready);
}

// Docs (`AdmitLayer`): "Clones of the layer, and of the services it makes, share the stage".
// Any age: hours of idle time between calls change nothing.
async fn idle_gaps<R: Runtime>(rt: Clocked<R>) {
    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .burst(2)
        .jitter(Duration::ZERO)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let bulkhead = bulkhead(&rt, 1, None);
    let work = Work::new(&rt);
    let mut shed = AdmitLayer::new(limiter, AdmitMode::Reject)
        .runtime(rt.clone())
        .layer(work.clone());
    let mut bounded = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitCall)
        .runtime(rt.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let mut backpressure = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        .runtime(rt.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    for round in 1..=3 {
        rt.sleep(3 * HOUR).await;
        assert_eq!(ready_and_call(&mut shed, 0).await, Ok(0), "round {round}");
        assert_eq!(ready_and_call(&mut shed, 0).await, Ok(0), "round {round}");
        assert_eq!(
            ready_and_call(&mut shed, 0).await,
            Err(Error::Rejected(Rejected::RateLimited {
                retry_after: ms(100)
            })),
            "round {round}: a burst of 2, no more"
        );
        let held = bulkhead.try_acquire_owned().unwrap();
        let start = rt.now();
        assert_eq!(
            ready_and_call(&mut bounded, 0).await,
            Err(Error::Rejected(Rejected::DeadlineExceeded)),
            "round {round}"
        );
        assert_eq!(rt.now() - start, ms(50), "round {round}");
        drop(held);
        poll_fn(|cx| backpressure.poll_ready(cx)).await.unwrap();
        rt.sleep(HOUR).await;
        assert_eq!(backpressure.call(2).await, Ok(2), "round {round}");
        assert_eq!(bulkhead.available(), 1, "round {round}");
    }
    assert_eq!(bulkhead.rejected(), 3);
    drop((bounded, backpressure));
    assert_conserved(&bulkhead);
}

#[test]
fn hours_of_idle_time_between_calls_change_nothing_in_any_admit_mode_on_every_runtime() {
    on_every_runtime!(idle_gaps);
}

// === repeated polls ========================================================================

// Docs (`AdmitMode::WaitReady`, `max_wait`): one wait per request, bounded by max_wait. Polling
// again while waiting must neither queue the service twice nor restart its deadline.
#[test]
fn repeated_polls_of_a_waiting_admit_service_queue_it_once_and_keep_its_first_deadline() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = bulkhead(&clock, 1, None);
    let work = Work::new(&clock);
    let held = bulkhead.try_acquire_owned().unwrap();

    let mut svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        .runtime(clock.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let start = clock.now();
    assert!(poller.ready(&mut svc).is_pending());
    let timers = clock.pending_timers();
    for step in 0..4 {
        clock.advance(ms(10));
        for _ in 0..10 {
            assert!(poller.ready(&mut svc).is_pending(), "step {step}");
        }
        assert_eq!(bulkhead.queued(), 1, "step {step}: queued once");
        assert_eq!(clock.pending_timers(), timers, "step {step}: no new timers");
    }
    let out = settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
    assert_eq!(out, Some(Ok(())), "ready: the refusal waits for the call");
    let refused = poller.poll(pin!(svc.call(1)).as_mut());
    assert_eq!(
        refused,
        std::task::Poll::Ready(Err(Error::Rejected(Rejected::DeadlineExceeded)))
    );
    assert_eq!(
        clock.now() - start,
        ms(50),
        "the deadline of the first poll"
    );
    assert_eq!(bulkhead.rejected(), 1, "one refusal, counted once");

    let mut svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitCall)
        .runtime(clock.clone())
        .max_wait(ms(50))
        .layer(work.clone());
    let start = clock.now();
    let mut call = pin!(svc.call(2));
    assert!(poller.poll(call.as_mut()).is_pending());
    for step in 0..4 {
        clock.advance(ms(10));
        for _ in 0..10 {
            assert!(poller.poll(call.as_mut()).is_pending(), "step {step}");
        }
        assert_eq!(bulkhead.queued(), 1, "step {step}");
    }
    let out = settle(&clock, &poller, start + HOUR, |cx| call.as_mut().poll(cx));
    assert_eq!(out, Some(Err(Error::Rejected(Rejected::DeadlineExceeded))));
    assert_eq!(clock.now() - start, ms(50));
    assert_eq!(bulkhead.rejected(), 2);
    drop(held);
    assert_eq!(work.calls(), 0);
    assert_conserved(&bulkhead);
}

// === boundaries ===========================================================================

// Docs (`max_wait`): "refuses ... at once when the wait is known to end later (a rate
// limiter's)": a wait that ends exactly at max_wait is not later.
async fn max_wait_boundary_on_a_limiter<R: Runtime>(rt: Clocked<R>) {
    let one_ns = Duration::from_nanos(1);
    for mode in [AdmitMode::WaitReady, AdmitMode::WaitCall] {
        let limiter = RateLimiter::builder(10, Duration::from_secs(1))
            .burst(1)
            .jitter(Duration::ZERO)
            .runtime(rt.clone())
            .build()
            .unwrap();
        let mut exact = AdmitLayer::new(limiter.clone(), mode)
            .runtime(rt.clone())
            .max_wait(ms(100))
            .layer(Work::new(&rt));
        let mut short = AdmitLayer::new(limiter, mode)
            .runtime(rt.clone())
            .max_wait(ms(100) - one_ns)
            .layer(Work::new(&rt));
        let start = rt.now();
        assert_eq!(ready_and_call(&mut exact, 0).await, Ok(0), "{mode:?}");
        assert_eq!(
            ready_and_call(&mut short, 0).await,
            Err(Error::Rejected(Rejected::DeadlineExceeded)),
            "{mode:?}: 1 ns short"
        );
        assert_eq!(rt.now(), start, "{mode:?}");
        assert_eq!(
            ready_and_call(&mut exact, 0).await,
            Ok(0),
            "{mode:?}: a wait ending exactly at max_wait does not end later"
        );
        assert_eq!(rt.now() - start, ms(100), "{mode:?}");
    }
}

#[test]
fn a_limiter_wait_that_ends_exactly_at_max_wait_is_admitted_and_one_nanosecond_more_is_not_on_every_runtime()
 {
    on_every_runtime!(max_wait_boundary_on_a_limiter);
}
