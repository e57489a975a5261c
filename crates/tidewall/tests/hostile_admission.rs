//! Hostile black-box tests of the `Admission` contract, written from the rustdoc alone: owned
//! guards, a quiet `try_admit`, `admit(Wait::No | Wait::Until)` on a bulkhead, a rate limiter
//! and `()`, and a stage of one's own kept elsewhere (a remote round trip) behind `AdmitLayer`.
//! Waits and guards are dropped at seeded random points; capacity must come back, every
//! refusal must be counted exactly once, and every deadline must hold to the virtual
//! nanosecond. The shared services, pollers and storms are in `admit_support`.

mod admit_support;
mod common;
mod support;

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};
use std::time::Duration;

#[cfg(feature = "metrics")]
use admit_support::tally;
use admit_support::{
    Answer, Poller, Stack, Work, WorkFuture, bulkhead, mode_seed, ready_and_call, settle, storm,
};
use common::ms;
use pin_project_lite::pin_project;
use support::{Gauge, HOUR, Rng, assert_conserved, maybe_cancel};
use tidewall::admission::{Admission, Wait};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::DefaultClassifier;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::testing::{Clocked, FakeClock};
use tidewall::tower::{AdmitLayer, AdmitMode, AdmitService, RetryService, admit, breaker, timeout};
use tidewall::{Deadline, Error, Rejected};
use tower_layer::Layer;
use tower_service::Service;

// === the Admission contract ===============================================================

// Docs (`Admission`): "Implemented by RateLimiter, Bulkhead and `()` (admits everything)".
#[test]
fn the_unit_stage_admits_everything_at_once_whatever_the_wait() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    assert_eq!(Admission::try_admit(&()), Some(()));
    for wait in [
        Wait::No,
        Wait::Until(Deadline::none()),
        Wait::Until(Deadline::at(clock.now())),
    ] {
        let admit = pin!(Admission::admit(&(), wait));
        assert_eq!(poller.poll(admit), Poll::Ready(Ok(())), "{wait:?}");
    }
}

// Docs (`Admission`): "Guards and futures own what they need ('static)"; `Guard: Send +
// 'static`, `Admit: ... + Send + 'static`. Docs (tower): response futures are named types.
#[test]
fn guards_admit_futures_and_tower_futures_are_send_and_static() {
    fn send_static<T: Send + 'static>() {}
    send_static::<<Bulkhead<FakeClock> as Admission>::Guard>();
    send_static::<<Bulkhead<FakeClock> as Admission>::Admit>();
    send_static::<<RateLimiter<FakeClock> as Admission>::Guard>();
    send_static::<<RateLimiter<FakeClock> as Admission>::Admit>();
    send_static::<<() as Admission>::Admit>();
    send_static::<admit::ResponseFuture<Work<FakeClock>, Bulkhead<FakeClock>, u64>>();
    send_static::<admit::ResponseFuture<Work<FakeClock>, RateLimiter<FakeClock>, u64>>();
    send_static::<breaker::ResponseFuture<WorkFuture<FakeClock>, FakeClock, DefaultClassifier>>();
    send_static::<timeout::ResponseFuture<WorkFuture<FakeClock>, FakeClock>>();
    send_static::<AdmitService<Work<FakeClock>, Bulkhead<FakeClock>, FakeClock>>();
    // Docs (tower): services are `Sync`, "which axum requires".
    fn sync<T: Sync>() {}
    sync::<AdmitService<Work<FakeClock>, Bulkhead<FakeClock>, FakeClock>>();
    sync::<AdmitService<Work<FakeClock>, RateLimiter<FakeClock>, FakeClock>>();
    sync::<Stack<FakeClock>>();
    sync::<RetryService<Stack<FakeClock>, FakeClock>>();
}

// Docs (`try_admit`): "Admits now if it can, without waiting and without counting a refusal as
// a rejection (the caller goes on to admit, which counts)." (`Wait::No`): "a stage that cannot
// admit now refuses with its own reason and hint (Rejected::BulkheadFull ...)".
#[test]
fn a_full_bulkhead_refuses_try_admit_quietly_and_admit_without_waiting_counts_one_rejection_each() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = bulkhead(&clock, 2, None);
    let a = bulkhead.try_admit().expect("a free slot");
    let b = bulkhead.try_admit().expect("a second free slot");
    assert_eq!(bulkhead.available(), 0);
    for _ in 0..5 {
        assert!(bulkhead.try_admit().is_none());
    }
    assert_eq!(bulkhead.rejected(), 0, "a quiet refusal counts nothing");
    for i in 1..=3 {
        let admit = pin!(bulkhead.admit(Wait::No));
        let out = poller.poll(admit);
        assert!(
            matches!(out, Poll::Ready(Err(Rejected::BulkheadFull))),
            "refused at once with the stage's reason: {out:?}"
        );
        assert_eq!(bulkhead.rejected(), i, "one rejection per refused admit");
        assert_eq!(bulkhead.queued(), 0, "Wait::No never queues");
    }
    assert_eq!(clock.pending_timers(), 0);
    drop((a, b));
    assert_conserved(&bulkhead);
}

// Docs (`Wait::Until`): "Until the stage admits, its own limits refuse (a bulkhead's max_wait
// or queue), or deadline would pass (Rejected::DeadlineExceeded ...). Deadline::none() waits as
// long as the stage allows." (`Bulkhead::rejected`): "full, waited too long, or past their
// deadline".
#[test]
fn a_bulkhead_admit_until_a_deadline_ends_exactly_there_and_its_own_limits_refuse_first() {
    let clock = FakeClock::new();
    let poller = Poller::new();

    // The deadline comes first: DeadlineExceeded exactly at it, counted once.
    let unbounded = bulkhead(&clock, 1, None);
    let held = unbounded.try_admit().unwrap();
    let start = clock.now();
    let mut admit = pin!(unbounded.admit(Wait::Until(Deadline::after(&clock, ms(50)))));
    assert!(poller.poll(admit.as_mut()).is_pending());
    assert_eq!(unbounded.queued(), 1);
    let out = settle(&clock, &poller, start + HOUR, |cx| admit.as_mut().poll(cx));
    assert!(
        matches!(out, Some(Err(Rejected::DeadlineExceeded))),
        "{out:?}"
    );
    assert_eq!(clock.now() - start, ms(50));
    assert_eq!(unbounded.rejected(), 1);
    assert_eq!(unbounded.queued(), 0);

    // The bulkhead's own max_wait comes first: its own reason, at its own limit.
    let bounded = bulkhead(&clock, 1, Some(ms(20)));
    let held2 = bounded.try_admit().unwrap();
    let start = clock.now();
    let mut admit = pin!(bounded.admit(Wait::Until(Deadline::after(&clock, ms(50)))));
    let out = settle(&clock, &poller, start + HOUR, |cx| admit.as_mut().poll(cx));
    assert!(matches!(out, Some(Err(Rejected::BulkheadFull))), "{out:?}");
    assert_eq!(clock.now() - start, ms(20));
    assert_eq!(bounded.rejected(), 1);

    // Deadline::none(): waits hours, then gets the slot the moment it is freed.
    let start = clock.now();
    let mut admit = pin!(unbounded.admit(Wait::Until(Deadline::none())));
    assert!(poller.poll(admit.as_mut()).is_pending());
    clock.advance(2 * HOUR);
    assert!(poller.poll(admit.as_mut()).is_pending());
    drop(held);
    let out = poller.poll(admit.as_mut());
    assert!(matches!(out, Poll::Ready(Ok(_))), "{out:?}");
    assert_eq!(clock.now() - start, 2 * HOUR);
    assert_eq!(unbounded.rejected(), 1, "an admitted wait counts nothing");
    drop(out);
    drop(held2);
    assert_conserved(&unbounded);
    assert_conserved(&bounded);
}

// Docs (`Wait::Until`): "Until the stage admits, ... or deadline would pass". A stage with a
// free slot admits at once: there is nothing to wait for, so nothing can pass the deadline.
#[test]
fn a_bulkhead_with_a_free_slot_admits_even_under_a_deadline_that_is_already_due() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = bulkhead(&clock, 1, None);
    let admit = pin!(bulkhead.admit(Wait::Until(Deadline::at(clock.now()))));
    let out = poller.poll(admit);
    assert!(matches!(out, Poll::Ready(Ok(_))), "{out:?}");
    assert_eq!(bulkhead.rejected(), 0);
    drop(out);
    assert_conserved(&bulkhead);
}

// Docs (`Admission::admit`): "Cancel safety: dropping the future releases whatever it was
// waiting for or held; nothing is taken from the stage." Docs (bulkhead): "a waiter dropped
// while queued leaves the queue; a permit granted to it at that instant is passed on."
#[test]
fn a_bulkhead_admit_dropped_while_queued_or_after_its_grant_passes_the_slot_on() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let bulkhead = bulkhead(&clock, 1, Some(Duration::from_secs(5)));
    let held = bulkhead.try_admit().unwrap();
    let mut first = Box::pin(bulkhead.admit(Wait::Until(Deadline::none())));
    let mut second = Box::pin(bulkhead.admit(Wait::Until(Deadline::after(&clock, HOUR))));
    assert!(poller.poll(first.as_mut()).is_pending());
    assert!(poller.poll(second.as_mut()).is_pending());
    assert_eq!(bulkhead.queued(), 2);
    // The slot is handed to `first`, which is dropped before it is polled again.
    drop(held);
    drop(first);
    let out = poller.poll(second.as_mut());
    assert!(
        matches!(out, Poll::Ready(Ok(_))),
        "the granted slot passed on: {out:?}"
    );
    assert_eq!(bulkhead.available(), 0);
    drop(out);
    drop(second);
    // Dropped while queued, never granted.
    let held = bulkhead.try_admit().unwrap();
    let mut waiting = Box::pin(bulkhead.admit(Wait::Until(Deadline::after(&clock, ms(100)))));
    assert!(poller.poll(waiting.as_mut()).is_pending());
    drop(waiting);
    assert_eq!(bulkhead.queued(), 0);
    assert_eq!(clock.pending_timers(), 0, "the dropped wait left no timer");
    assert_eq!(
        bulkhead.rejected(),
        0,
        "a cancelled wait is not a rejection"
    );
    drop(held);
    assert_conserved(&bulkhead);
}

// Docs (`Wait::No`): "refuses with its own reason and hint (... Rejected::RateLimited with
// retry_after)". (`RateLimiter::check`): "Rejected::RateLimited with the exact retry_after."
#[test]
fn a_rate_limiter_refuses_admit_without_waiting_with_the_exact_retry_after() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(limiter.try_admit(), Some(()));
    assert_eq!(limiter.try_admit(), None);
    let out = poller.poll(pin!(limiter.admit(Wait::No)));
    assert_eq!(
        out,
        Poll::Ready(Err(Rejected::RateLimited {
            retry_after: ms(100)
        }))
    );
    clock.advance(ms(30));
    let out = poller.poll(pin!(limiter.admit(Wait::No)));
    assert_eq!(
        out,
        Poll::Ready(Err(Rejected::RateLimited {
            retry_after: ms(70)
        }))
    );
    clock.advance(ms(70));
    assert_eq!(
        poller.poll(pin!(limiter.admit(Wait::No))),
        Poll::Ready(Ok(()))
    );
}

// Docs (`Wait::Until`): "Rejected::DeadlineExceeded, returned as soon as the wait is known to
// end past it".
#[test]
fn a_rate_limiter_admit_fails_at_once_past_its_deadline_and_otherwise_waits_exactly() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert_eq!(limiter.try_admit(), Some(()));
    let start = clock.now();
    let out = poller.poll(pin!(
        limiter.admit(Wait::Until(Deadline::after(&clock, ms(50))))
    ));
    assert_eq!(out, Poll::Ready(Err(Rejected::DeadlineExceeded)));
    assert_eq!(clock.pending_timers(), 0);
    let mut admit = pin!(limiter.admit(Wait::Until(Deadline::after(&clock, ms(150)))));
    let out = settle(&clock, &poller, start + HOUR, |cx| admit.as_mut().poll(cx));
    assert_eq!(out, Some(Ok(())));
    assert_eq!(
        clock.now() - start,
        ms(100),
        "the next cell, without jitter"
    );
}

// Docs (`UntilReady`): "Cancel safety: GCRA reserves nothing while waiting; dropping it loses
// nothing and takes no capacity."
#[test]
fn dropping_pending_rate_limiter_admits_takes_no_capacity() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .burst(2)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert!(limiter.try_admit().is_some() && limiter.try_admit().is_some());
    for _ in 0..3 {
        let mut admit = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
        assert!(poller.poll(admit.as_mut()).is_pending());
    }
    assert_eq!(clock.pending_timers(), 0, "dropped waits left no timer");
    clock.advance(ms(100));
    assert!(
        limiter.try_admit().is_some(),
        "the next cell is still there"
    );
    assert!(limiter.try_admit().is_none());
    clock.advance(ms(300));
    assert!(limiter.try_admit().is_some() && limiter.try_admit().is_some());
    assert!(limiter.try_admit().is_none());
}

// Docs (`Admission::admit`): "Cancel safety: dropping the future releases whatever it was
// waiting for or held; nothing is taken from the stage." Guards "released on drop".
async fn bulkhead_admissions_under_random_cancellation<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = bulkhead(&rt, 3, Some(ms(40)));
    let gauge = Gauge::default();
    let mut rng = Rng::new(0xAD_0155);
    let mut handles = Vec::new();
    for _ in 0..150 {
        let (bh, clock, gauge, draw) = (bulkhead.clone(), rt.clone(), gauge.clone(), rng.next());
        handles.push(rt.spawn(async move {
            clock.sleep(Duration::from_micros(draw % 25_000)).await;
            let wait = match (draw >> 8) % 4 {
                0 => Wait::No,
                1 => Wait::Until(Deadline::none()),
                2 => Wait::Until(Deadline::at(clock.now())),
                _ => Wait::Until(Deadline::after(&clock, ms((draw >> 12) % 50))),
            };
            let held = if draw % 5 == 0 {
                bh.try_admit()
            } else {
                maybe_cancel(&clock, draw >> 16, bh.admit(wait))
                    .await
                    .and_then(Result::ok)
            };
            if let Some(guard) = held {
                let running = gauge.enter();
                let hold = clock.sleep(ms((draw >> 20) % 12));
                let _ = maybe_cancel(&clock, draw >> 24, hold).await;
                // Counted out before the slot is given back.
                drop(running);
                drop(guard);
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    assert_eq!(gauge.now(), 0);
    assert!(gauge.most() <= 3, "{} held at once of 3", gauge.most());
    assert!(bulkhead.rejected() <= 150);
    assert_conserved(&bulkhead);
}

#[test]
fn bulkhead_admissions_dropped_at_random_points_conserve_every_slot_on_every_runtime() {
    on_every_runtime!(bulkhead_admissions_under_random_cancellation);
}

#[cfg(feature = "metrics")]
// Docs (`try_admit`): "without counting a refusal as a rejection (the caller goes on to admit,
// which counts)"; (`RateLimiter`): "Counts a caller finally refused (waits count only then,
// not per denial)".
#[test]
fn a_rate_limiter_counts_only_callers_finally_refused() {
    tally::install();
    let clock = FakeClock::new();
    let poller = Poller::new();
    let name = "hostile-admit-limiter";
    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .name(name)
        .runtime(clock.clone())
        .build()
        .unwrap();
    assert!(limiter.try_admit().is_some());
    for _ in 0..3 {
        assert!(limiter.try_admit().is_none());
    }
    assert_eq!(tally::rejections(name), 0, "quiet refusals");
    let _ = poller.poll(pin!(limiter.admit(Wait::No)));
    assert_eq!(tally::rejections(name), 1, "refused without waiting");
    // A wait that ends admitted counts nothing, however many denials it saw.
    let mut waiting = pin!(limiter.admit(Wait::Until(Deadline::none())));
    let out = settle(&clock, &poller, clock.now() + HOUR, |cx| {
        waiting.as_mut().poll(cx)
    });
    assert_eq!(out, Some(Ok(())));
    assert_eq!(tally::rejections(name), 1, "an admitted wait");
    let out = poller.poll(pin!(
        limiter.admit(Wait::Until(Deadline::after(&clock, ms(10))))
    ));
    assert_eq!(out, Poll::Ready(Err(Rejected::DeadlineExceeded)));
    assert_eq!(tally::rejections(name), 2, "refused under a deadline");
    // Through the layer: once per refused call.
    let mut svc = AdmitLayer::new(limiter.clone(), AdmitMode::WaitCall)
        .runtime(clock.clone())
        .max_wait(ms(10))
        .layer(Answer::default());
    let out = poller.poll(pin!(svc.call(Ok(1))));
    assert_eq!(
        out,
        Poll::Ready(Err(Error::Rejected(Rejected::DeadlineExceeded)))
    );
    assert_eq!(tally::rejections(name), 3);
    let mut shed = AdmitLayer::new(limiter, AdmitMode::Reject)
        .runtime(clock.clone())
        .layer(Answer::default());
    assert_eq!(poller.ready(&mut shed), Poll::Ready(Ok(())));
    let out = poller.poll(pin!(shed.call(Ok(1))));
    assert!(
        matches!(
            out,
            Poll::Ready(Err(Error::Rejected(Rejected::RateLimited { .. })))
        ),
        "{out:?}"
    );
    assert_eq!(tally::rejections(name), 4);
}

// === a stage kept elsewhere ================================================================

/// What a [`Remote`] stage saw: every wait it was asked with, the guards it granted and the
/// guards given back.
#[derive(Default)]
struct RemoteState {
    waits: std::sync::Mutex<Vec<Wait>>,
    granted: AtomicUsize,
    released: AtomicUsize,
    /// Refuse every admission with `Rejected::BackendUnavailable` (after the round trip).
    refuse: std::sync::atomic::AtomicBool,
}

impl RemoteState {
    fn outstanding(&self) -> usize {
        self.granted.load(SeqCst) - self.released.load(SeqCst)
    }
}

/// A stage that decides after a round trip, as a distributed limiter does: `try_admit` can
/// never decide, `admit` answers after `round_trip`.
#[derive(Clone)]
struct Remote<R> {
    rt: R,
    round_trip: Duration,
    state: Arc<RemoteState>,
}

impl<R: Clock> Remote<R> {
    fn new(rt: &R, round_trip: Duration) -> Self {
        Self {
            rt: rt.clone(),
            round_trip,
            state: Arc::default(),
        }
    }
}

/// A guard of [`Remote`]: counted back on drop.
struct Ticket(Arc<RemoteState>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.released.fetch_add(1, SeqCst);
    }
}

pin_project! {
    /// The round trip of [`Remote::admit`].
    struct RoundTrip<R: Clock> {
        #[pin]
        sleep: R::Sleep,
        state: Arc<RemoteState>,
    }
}

impl<R: Clock> Future for RoundTrip<R> {
    type Output = Result<Ticket, Rejected>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        if this.state.refuse.load(SeqCst) {
            return Poll::Ready(Err(Rejected::BackendUnavailable));
        }
        this.state.granted.fetch_add(1, SeqCst);
        Poll::Ready(Ok(Ticket(this.state.clone())))
    }
}

impl<R: Clock> Admission for Remote<R> {
    type Guard = Ticket;
    type Admit = RoundTrip<R>;

    fn try_admit(&self) -> Option<Ticket> {
        None
    }

    fn admit(&self, wait: Wait) -> RoundTrip<R> {
        self.state.waits.lock().unwrap().push(wait);
        RoundTrip {
            sleep: self.rt.sleep(self.round_trip),
            state: self.state.clone(),
        }
    }
}

// Docs (admission): "decide through admit, either at once (Wait::No: refused with the stage's
// own reason and hint) or waiting up to a deadline (Wait::Until)"; (`Wait::No`): "A stage that
// decides remotely still makes its round trip." (`AdmitLayer::new`): "a wait lasts as long as
// the stage allows ... unless bounded with max_wait".
async fn remote_stage_modes<R: Runtime>(rt: Clocked<R>) {
    let trip = ms(5);
    for (mode, bound) in [
        (AdmitMode::Reject, None),
        (AdmitMode::Reject, Some(ms(50))),
        (AdmitMode::WaitReady, None),
        (AdmitMode::WaitReady, Some(ms(50))),
        (AdmitMode::WaitCall, None),
        (AdmitMode::WaitCall, Some(ms(50))),
    ] {
        let remote = Remote::new(&rt, trip);
        let work = Work::new(&rt);
        let layer = AdmitLayer::new(remote.clone(), mode).runtime(rt.clone());
        let layer = match bound {
            Some(bound) => layer.max_wait(bound),
            None => layer,
        };
        let mut svc = layer.layer(work.clone());
        let start = rt.now();
        assert_eq!(
            ready_and_call(&mut svc, 10).await,
            Ok(10),
            "{mode:?} {bound:?}"
        );
        assert_eq!(
            rt.now() - start,
            trip + ms(10),
            "{mode:?} {bound:?}: the round trip, then the call"
        );
        let waits = remote.state.waits.lock().unwrap().clone();
        let expected = match (mode, bound) {
            (AdmitMode::Reject, _) => Wait::No,
            (_, None) => Wait::Until(Deadline::none()),
            (_, Some(bound)) => Wait::Until(Deadline::at(start + bound)),
        };
        assert_eq!(waits, vec![expected], "{mode:?} {bound:?}");
        assert_eq!(remote.state.outstanding(), 0, "{mode:?} {bound:?}");

        // The stage's own refusal, with its own reason, in every mode.
        remote.state.refuse.store(true, SeqCst);
        let refused = ready_and_call(&mut svc, 10).await;
        assert_eq!(
            refused,
            Err(Error::Rejected(Rejected::BackendUnavailable)),
            "{mode:?} {bound:?}"
        );
        assert_eq!(
            work.calls(),
            1,
            "{mode:?} {bound:?}: a refused call never ran"
        );
    }
}

#[test]
fn a_remote_stage_is_asked_with_the_wait_each_mode_allows_and_makes_its_round_trip_on_every_runtime()
 {
    on_every_runtime!(remote_stage_modes);
}

// Docs (`Admission::Guard`): "Held for the whole call and released on drop"; (`AdmitLayer`):
// "The stage's guard ... is held until the response future completes, or is dropped with it";
// (admit `ResponseFuture`): "nothing is held afterwards".
async fn remote_guards_under_random_cancellation<R: Runtime>(rt: Clocked<R>, mode: AdmitMode) {
    let remote = Remote::new(&rt, ms(3));
    let work = Work::new(&rt);
    let svc = AdmitLayer::new(remote.clone(), mode)
        .runtime(rt.clone())
        .max_wait(ms(20))
        .layer(work.clone());
    let mut rng = Rng::new(0x7_1C4E7 ^ mode_seed(mode));
    storm(&rt, &svc, &mut rng, 120).await;
    drop(svc);
    assert!(work.calls() > 10, "{mode:?}: the storm made calls");
    assert_eq!(
        remote.state.outstanding(),
        0,
        "{mode:?}: {} guards granted, {} given back",
        remote.state.granted.load(SeqCst),
        remote.state.released.load(SeqCst)
    );
}

#[test]
fn every_guard_of_a_remote_stage_is_given_back_exactly_once_under_random_cancellation_on_every_runtime()
 {
    for mode in [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall] {
        on_every_runtime!(|rt| remote_guards_under_random_cancellation(rt, mode));
    }
}

// Docs (`AdmitLayer`): "The stage's guard (a bulkhead slot) is held until the response future
// completes". Checked on a FakeClock at every step of one call, in every mode.
#[test]
fn a_guard_is_held_exactly_while_the_call_runs_and_given_back_once_in_every_mode() {
    for mode in [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall] {
        let clock = FakeClock::new();
        let poller = Poller::new();
        let remote = Remote::new(&clock, ms(5));
        let work = Work::new(&clock);
        let mut svc = AdmitLayer::new(remote.clone(), mode)
            .runtime(clock.clone())
            .layer(work.clone());
        let out = settle(&clock, &poller, clock.now() + HOUR, |cx| svc.poll_ready(cx));
        assert_eq!(out, Some(Ok(())), "{mode:?}");
        let mut call = pin!(svc.call(20));
        assert!(poller.poll(call.as_mut()).is_pending(), "{mode:?}");
        let mut steps = 0;
        loop {
            if work.gauge.now() == 1 {
                assert_eq!(
                    remote.state.outstanding(),
                    1,
                    "{mode:?}: the guard is held while the call runs"
                );
            }
            if clock.next_timer().is_none() {
                break;
            }
            assert!(clock.advance_to_next_timer());
            steps += 1;
            if let Poll::Ready(out) = poller.poll(call.as_mut()) {
                assert_eq!(out, Ok(20), "{mode:?}");
                break;
            }
            assert!(steps < 100);
        }
        assert_eq!(
            remote.state.outstanding(),
            0,
            "{mode:?}: given back when the call completed"
        );
        assert_eq!(remote.state.granted.load(SeqCst), 1, "{mode:?}");
    }
}
