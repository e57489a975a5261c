//! Hostile black-box tests of `BreakerLayer::wait_in_ready`, written from the rustdoc alone:
//! callers waiting in `poll_ready` while the breaker is open, `max_wait` at zero, at
//! `Duration::MAX` and to the nanosecond, the permit held from `poll_ready` to the call,
//! exact probes, generations, a forced-open breaker, rejection counts, and callers cancelled
//! at seeded random points. The shared services, pollers and storms are in `admit_support`.

mod admit_support;
mod common;
mod support;

use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

#[cfg(feature = "metrics")]
use admit_support::tally;
use admit_support::{Answer, Poller, Work, settle, storm, tripped_breaker};
use common::ms;
use support::{HOUR, Rng};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::{Clocked, FakeClock};
use tidewall::tower::BreakerLayer;
use tidewall::{Error, Rejected};
use tower_layer::Layer;
use tower_service::Service;

// === BreakerLayer::wait_in_ready ==========================================================

// Docs (`wait_in_ready`): "While the breaker refuses, poll_ready waits: it sleeps for the
// breaker's retry_after and asks again, and holds the permit it gets until the call."
#[test]
fn a_caller_waiting_in_poll_ready_while_open_is_admitted_when_the_breaker_half_opens() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b1");
    let answer = Answer::default();
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(None)
        .layer(answer.clone());
    clock.advance(ms(10));
    let start = clock.now();
    assert!(poller.ready(&mut svc).is_pending());
    let out = settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
    assert_eq!(out, Some(Ok(())));
    assert_eq!(
        clock.now() - start,
        ms(90),
        "admitted the moment the break ended"
    );
    assert_eq!(breaker.state(), State::HalfOpen);
    assert!(
        breaker.try_acquire().is_err(),
        "the waiter holds the only probe"
    );
    assert_eq!(answer.calls(), 0);
    assert_eq!(poller.poll(pin!(svc.call(Ok(1)))), Poll::Ready(Ok(1)));
    assert_eq!(breaker.state(), State::Closed, "the probe succeeded");
    assert_eq!(clock.pending_timers(), 0);
}

// Docs (`wait_in_ready`): "A wait longer than max_wait gives up with the breaker's
// Rejected::CircuitOpen, at once when the breaker's hint already ends past it"; "Giving up is
// never a poll_ready error ...: poll_ready reports ready and the next call fails at once with
// the refusal, the inner service not called."
#[test]
fn a_caller_with_a_short_max_wait_gets_circuit_open_at_once() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b2");
    let answer = Answer::default();
    clock.advance(ms(10));
    for max_wait in [ms(50), Duration::ZERO] {
        let mut svc = BreakerLayer::new(breaker.clone())
            .wait_in_ready(max_wait)
            .layer(answer.clone());
        assert_eq!(
            poller.ready(&mut svc),
            Poll::Ready(Ok(())),
            "{max_wait:?}: ready, the refusal waits for the call"
        );
        let at = clock.now();
        let out = poller.poll(pin!(svc.call(Ok(1))));
        assert_eq!(clock.now(), at, "{max_wait:?}: the call fails at once");
        match out {
            Poll::Ready(Err(Error::Rejected(Rejected::CircuitOpen { retry_after }))) => {
                assert!(
                    retry_after > max_wait && retry_after <= ms(90),
                    "{max_wait:?}: the breaker's own hint: {retry_after:?}"
                );
            }
            other => panic!("{max_wait:?}: {other:?}"),
        }
        assert_eq!(clock.pending_timers(), 0, "{max_wait:?}: no timer left");
    }
    assert_eq!(answer.calls(), 0);
    // A closed breaker is ready at once, even with a max_wait of zero.
    breaker.reset();
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(Duration::ZERO)
        .layer(answer.clone());
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
}

// Docs (`wait_in_ready`): `max_wait` "(None: no bound)"; (`rt::Clock::sleep`): "A duration too
// large to add to the clock sleeps forever ... instead of overflowing".
#[test]
fn a_caller_with_a_max_wait_of_duration_max_waits_out_the_break_without_overflowing() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b7");
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(Duration::MAX)
        .layer(Answer::default());
    let start = clock.now();
    let out = settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
    assert_eq!(out, Some(Ok(())));
    assert_eq!(clock.now() - start, ms(100));
    assert_eq!(poller.poll(pin!(svc.call(Ok(3)))), Poll::Ready(Ok(3)));
    assert_eq!(breaker.state(), State::Closed);
}

// Docs (`wait_in_ready`): a wait longer than max_wait gives up with CircuitOpen, never later:
// "poll_ready reports ready and the next call fails at once with the refusal". Here the only
// probe is taken by someone else when the break ends.
#[test]
fn a_caller_whose_wait_outlasts_max_wait_gives_up_with_circuit_open_no_later_than_max_wait() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b3");
    let start = clock.now();
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(150))
        .layer(Answer::default());
    assert!(
        poller.ready(&mut svc).is_pending(),
        "the break fits max_wait"
    );
    clock.advance(ms(100));
    let probe = breaker.try_acquire().unwrap();
    assert!(probe.is_probe());
    let out = settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
    assert_eq!(out, Some(Ok(())), "ready: the refusal waits for the call");
    assert!(
        clock.now() - start <= ms(150),
        "gave up {:?} after the start, past max_wait",
        clock.now() - start
    );
    let at = clock.now();
    let out = poller.poll(pin!(svc.call(Ok(1))));
    assert!(
        matches!(
            out,
            Poll::Ready(Err(Error::Rejected(Rejected::CircuitOpen { .. })))
        ),
        "{out:?}"
    );
    assert_eq!(clock.now(), at, "the call fails at once");
    drop(probe);
    assert_eq!(breaker.state(), State::HalfOpen);
}

// Docs (`BreakerService::into_inner`): "a permit taken in poll_ready is given back unrecorded";
// (`wait_in_ready`): the permit, "a half-open probe slot, given back when the service is
// dropped or called"; (`BreakerService`): "A clone ... starts holding no permit."
#[test]
fn a_permit_held_from_poll_ready_records_nothing_and_frees_the_probe_when_the_service_goes() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b4");
    clock.advance(ms(100));
    let layer = BreakerLayer::new(breaker.clone()).wait_in_ready(None);
    let answer = Answer::default();

    // Dropped.
    let mut svc = layer.layer(answer.clone());
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    let counts = breaker.counts();
    assert!(
        breaker.try_acquire().is_err(),
        "the service holds the probe"
    );
    drop(svc);
    assert_eq!(breaker.counts(), counts, "nothing recorded");
    assert_eq!(breaker.state(), State::HalfOpen);
    let probe = breaker
        .try_acquire()
        .expect("dropping the service gave the probe back");
    assert!(probe.is_probe());
    drop(probe);

    // into_inner.
    let mut svc = layer.layer(answer.clone());
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    let _inner = svc.into_inner();
    assert_eq!(breaker.counts(), counts);
    drop(
        breaker
            .try_acquire()
            .expect("into_inner gave the probe back"),
    );

    // A response future dropped unpolled.
    let mut svc = layer.layer(answer.clone());
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    drop(svc.call(Ok(1)));
    assert_eq!(breaker.counts(), counts);
    drop(
        breaker
            .try_acquire()
            .expect("a dropped response future gave the probe back"),
    );

    // A clone holds nothing: it waits, and gets the probe when its original goes.
    let mut original = layer.layer(answer.clone());
    assert_eq!(poller.ready(&mut original), Poll::Ready(Ok(())));
    let mut clone = original.clone();
    assert!(
        poller.ready(&mut clone).is_pending(),
        "the clone has no permit of its own"
    );
    drop(original);
    let out = settle(&clock, &poller, clock.now() + HOUR, |cx| {
        clone.poll_ready(cx)
    });
    assert_eq!(out, Some(Ok(())), "the clone got the freed probe");
    assert_eq!(breaker.counts(), counts);
    assert_eq!(poller.poll(pin!(clone.call(Ok(2)))), Poll::Ready(Ok(2)));
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(answer.calls(), 2, "the dropped call and the last one");
}

// Docs (`wait_in_ready`): "Cancel safety: a caller that stops polling holds nothing but, once
// admitted, the permit".
#[test]
fn a_caller_that_stops_polling_before_admission_holds_nothing() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b5");
    let layer = BreakerLayer::new(breaker.clone()).wait_in_ready(None);
    let mut idle = layer.layer(Answer::default());
    assert!(poller.ready(&mut idle).is_pending());
    clock.advance(ms(100)); // `idle` is woken but never polled again
    let mut other = layer.layer(Answer::default());
    assert_eq!(
        poller.ready(&mut other),
        Poll::Ready(Ok(())),
        "the probe is free"
    );
    assert_eq!(poller.poll(pin!(other.call(Ok(1)))), Poll::Ready(Ok(1)));
    assert_eq!(breaker.state(), State::Closed);
    // A waiter dropped mid-sleep leaves no timer behind.
    breaker.try_acquire().unwrap().failure();
    let mut dropped = layer.layer(Answer::default());
    assert!(poller.ready(&mut dropped).is_pending());
    drop((dropped, idle));
    assert_eq!(clock.pending_timers(), 0);
}

// Docs (breaker): "Exact probes: ... however many callers race, exactly the configured number
// get through." (`wait_in_ready`): callers are held "until the breaker admits".
#[test]
fn many_callers_waiting_in_poll_ready_get_exactly_the_probes_then_all_get_through() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b6");
    let answer = Answer::default();
    let layer = BreakerLayer::new(breaker.clone()).wait_in_ready(None);
    let mut waiters: Vec<_> = (0..5).map(|_| layer.layer(answer.clone())).collect();
    for w in &mut waiters {
        assert!(poller.ready(w).is_pending());
    }
    clock.advance(ms(100));
    let admitted: Vec<usize> = waiters
        .iter_mut()
        .enumerate()
        .filter_map(|(i, w)| poller.ready(w).is_ready().then_some(i))
        .collect();
    assert_eq!(admitted.len(), 1, "one probe, one caller: {admitted:?}");
    let first = admitted[0];
    assert_eq!(
        poller.poll(pin!(waiters[first].call(Ok(0)))),
        Poll::Ready(Ok(0))
    );
    assert_eq!(breaker.state(), State::Closed);
    let closed_at = clock.now();
    for (i, w) in waiters.iter_mut().enumerate() {
        if i == first {
            continue;
        }
        let out = settle(&clock, &poller, closed_at + HOUR, |cx| w.poll_ready(cx));
        assert_eq!(out, Some(Ok(())), "waiter {i} got through");
        assert_eq!(poller.poll(pin!(w.call(Ok(1)))), Poll::Ready(Ok(1)));
    }
    assert_eq!(answer.calls(), 5);
    assert_eq!(breaker.state(), State::Closed);
}

// Docs (breaker): "Any age: a breaker behaves the same an hour, a month or a century after it
// was built, and after any idle gap".
#[test]
fn a_breaker_waiter_after_hours_of_idle_time_is_admitted_at_once() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-b8");
    let layer = BreakerLayer::new(breaker.clone()).wait_in_ready(ms(50));
    // Polled while open (the hint fits no wait of 50 ms), then hours of silence.
    let mut early = BreakerLayer::new(breaker.clone())
        .wait_in_ready(None)
        .layer(Answer::default());
    assert!(poller.ready(&mut early).is_pending());
    clock.advance(5 * HOUR);
    assert_eq!(
        poller.ready(&mut early),
        Poll::Ready(Ok(())),
        "long past the break"
    );
    drop(early);
    let mut late = layer.layer(Answer::default());
    assert_eq!(poller.ready(&mut late), Poll::Ready(Ok(())));
    // Ready, then idle for hours, then called: the outcome still counts.
    clock.advance(5 * HOUR);
    assert_eq!(poller.poll(pin!(late.call(Ok(1)))), Poll::Ready(Ok(1)));
    assert_eq!(breaker.state(), State::Closed);
    for round in 0..3 {
        clock.advance(7 * HOUR);
        breaker.try_acquire().unwrap().failure();
        let mut svc = layer.layer(Answer::default());
        assert_eq!(
            poller.ready(&mut svc),
            Poll::Ready(Ok(())),
            "round {round}: ready, the refusal waits for the call"
        );
        let at = clock.now();
        let out = poller.poll(pin!(svc.call(Ok(1))));
        assert!(
            matches!(
                out,
                Poll::Ready(Err(Error::Rejected(Rejected::CircuitOpen { .. })))
            ),
            "round {round}: a fresh break of 100 ms exceeds 50 ms: {out:?}"
        );
        assert_eq!(clock.now(), at, "round {round}: the call fails at once");
        clock.advance(ms(100));
        assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())), "round {round}");
        assert_eq!(poller.poll(pin!(svc.call(Ok(2)))), Poll::Ready(Ok(2)));
    }
}

#[cfg(feature = "metrics")]
// Docs (`wait_in_ready`): "gives up with the breaker's Rejected::CircuitOpen ...; the rejection
// is counted once, then"; "poll_ready reports ready and the next call fails at once with the
// refusal". A caller that waits and is admitted was never refused.
#[test]
fn a_breaker_waiter_is_counted_once_when_it_gives_up_and_never_when_admitted() {
    tally::install();
    let clock = FakeClock::new();
    let poller = Poller::new();

    // Gives up at once.
    let name = "hostile-admit-m1";
    let breaker = tripped_breaker(&clock, name);
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(10))
        .layer(Answer::default());
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())));
    assert_eq!(tally::rejections(name), 1);
    let out = poller.poll(pin!(svc.call(Ok(1))));
    assert!(matches!(out, Poll::Ready(Err(_))), "{out:?}");
    assert_eq!(
        tally::rejections(name),
        1,
        "the failed call is not counted again"
    );

    // Gives up after waiting through refusals (the probe taken by someone else).
    let name = "hostile-admit-m2";
    let breaker = tripped_breaker(&clock, name);
    let start = clock.now();
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(150))
        .layer(Answer::default());
    assert!(poller.ready(&mut svc).is_pending());
    clock.advance(ms(100));
    let probe = breaker.try_acquire().unwrap();
    let out = settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
    assert_eq!(out, Some(Ok(())), "ready: the refusal waits for the call");
    assert_eq!(tally::rejections(name), 1, "counted once when it gave up");
    let at = clock.now();
    let out = poller.poll(pin!(svc.call(Ok(1))));
    assert!(matches!(out, Poll::Ready(Err(_))), "{out:?}");
    assert_eq!(clock.now(), at, "the call fails at once");
    assert_eq!(
        tally::rejections(name),
        1,
        "the failed call is not counted again"
    );
    drop(probe);

    // Waits through refusals, then admitted: nothing counted.
    let name = "hostile-admit-m3";
    let breaker = tripped_breaker(&clock, name);
    let start = clock.now();
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(None)
        .layer(Answer::default());
    assert!(poller.ready(&mut svc).is_pending());
    clock.advance(ms(100));
    let probe = breaker.try_acquire().unwrap();
    assert!(poller.ready(&mut svc).is_pending(), "the probe is taken");
    clock.advance(ms(20));
    drop(probe);
    let out = settle(&clock, &poller, start + HOUR, |cx| svc.poll_ready(cx));
    assert_eq!(out, Some(Ok(())));
    assert_eq!(
        tally::rejections(name),
        0,
        "an admitted waiter was never refused"
    );
}

// === breaker generations and forced states ===================================================

// Docs (breaker): "Generations: every transition bumps a generation the permit carries; an
// outcome from an earlier state never moves the current one." (`wait_in_ready`): the permit
// is held "until the call".
#[test]
fn a_permit_held_from_poll_ready_across_a_trip_does_not_move_the_new_state() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(ms(100))
        .half_open_probes(1)
        .max_half_open_wait(None)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let answer = Answer::default();
    let mut svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(None)
        .layer(answer.clone());
    assert_eq!(poller.ready(&mut svc), Poll::Ready(Ok(())), "closed");
    // Someone else trips the breaker while our permit waits for its call.
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    clock.advance(ms(40));
    let out = poller.poll(pin!(svc.call(Ok(1))));
    assert!(out.is_ready(), "{out:?}");
    assert_eq!(
        breaker.state(),
        State::Open,
        "a success from the closed generation does not close an open breaker"
    );
    let mut svc2 = BreakerLayer::new(breaker.clone())
        .wait_in_ready(None)
        .layer(answer.clone());
    let start = clock.now();
    let out = settle(&clock, &poller, start + HOUR, |cx| svc2.poll_ready(cx));
    assert_eq!(out, Some(Ok(())));
    assert_eq!(
        clock.now() - start,
        ms(60),
        "the break was not restarted or shortened"
    );
}

// Docs (`wait_in_ready`): "A wait longer than max_wait (None: no bound) gives up with the
// breaker's Rejected::CircuitOpen"; "poll_ready reports ready and the next call fails at once
// with the refusal"; (`force_open`): "it stays open until reset". A waiter on a forced-open
// breaker must sleep (never spin) and honour its max_wait.
#[test]
fn a_waiter_on_a_forced_open_breaker_sleeps_and_honours_its_max_wait() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(ms(100))
        .runtime(clock.clone())
        .build()
        .unwrap();
    breaker.force_open();
    let mut bounded = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(500))
        .layer(Answer::default());
    let start = clock.now();
    let out = settle(&clock, &poller, start + HOUR, |cx| bounded.poll_ready(cx));
    assert_eq!(out, Some(Ok(())), "ready: the refusal waits for the call");
    assert!(clock.now() - start <= ms(500), "{:?}", clock.now() - start);
    let at = clock.now();
    let out = poller.poll(pin!(bounded.call(Ok(1))));
    assert!(
        matches!(
            out,
            Poll::Ready(Err(Error::Rejected(Rejected::CircuitOpen { .. })))
        ),
        "{out:?}"
    );
    assert_eq!(clock.now(), at, "the call fails at once");

    let mut unbounded = BreakerLayer::new(breaker.clone())
        .wait_in_ready(None)
        .layer(Answer::default());
    // Ten minutes of a forced-open breaker: still waiting, never spinning (settle checks).
    let start = clock.now();
    let out = settle(&clock, &poller, start + ms(600_000), |cx| {
        unbounded.poll_ready(cx)
    });
    assert!(out.is_none(), "{out:?}");
    assert!(clock.pending_timers() >= 1, "the waiter sleeps on a timer");
    // Reset: the breaker admits again, and the waiter gets through.
    breaker.reset();
    let reset_at = clock.now();
    let out = settle(&clock, &poller, reset_at + HOUR, |cx| {
        unbounded.poll_ready(cx)
    });
    assert_eq!(out, Some(Ok(())), "admitted after the reset");
    drop(unbounded);
    assert_eq!(clock.pending_timers(), 0);
}

// === boundaries ============================================================================

// Docs (`wait_in_ready`): "A wait longer than max_wait ... gives up ..., at once when the
// breaker's hint already ends past it" ("poll_ready reports ready and the next call fails at
// once with the refusal"): a hint ending exactly at max_wait does not.
#[test]
fn a_breaker_hint_ending_exactly_at_max_wait_is_waited_out_and_one_nanosecond_more_is_not() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = tripped_breaker(&clock, "hostile-admit-boundary");
    let mut short = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(100) - Duration::from_nanos(1))
        .layer(Answer::default());
    assert_eq!(
        poller.ready(&mut short),
        Poll::Ready(Ok(())),
        "1 ns short of the break: ready, the refusal waits for the call"
    );
    let at = clock.now();
    assert!(
        matches!(
            poller.poll(pin!(short.call(Ok(1)))),
            Poll::Ready(Err(Error::Rejected(Rejected::CircuitOpen { .. })))
        ),
        "1 ns short of the break"
    );
    assert_eq!(clock.now(), at, "the call fails at once");
    let mut exact = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(100))
        .layer(Answer::default());
    let start = clock.now();
    let out = settle(&clock, &poller, start + HOUR, |cx| exact.poll_ready(cx));
    assert_eq!(out, Some(Ok(())));
    assert_eq!(clock.now() - start, ms(100));
}

// === under random cancellation =============================================================

// Docs (breaker): "a permit dropped, cancelled or unwound by a panic records nothing and a
// probe gives its slot back"; "Exact probes"; (`wait_in_ready`): "a caller that stops polling
// holds nothing but, once admitted, the permit ... given back when the service is dropped or
// called". After callers waiting in poll_ready are cancelled at random, no probe slot leaks.
async fn breaker_wait_storm<R: Runtime>(rt: Clocked<R>) {
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(2)
        .break_duration(ms(10))
        .half_open_probes(2)
        .max_half_open_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let work = Work::new(&rt);
    let svc = BreakerLayer::new(breaker.clone())
        .wait_in_ready(ms(35))
        .layer(work.clone());
    let mut rng = Rng::new(0xB4EA_C3E5);
    storm(&rt, &svc, &mut rng, 200).await;
    drop(svc);
    assert!(work.calls() > 10, "{} calls", work.calls());
    // Trip it by hand, wait out the break: exactly two probes must be free.
    breaker.reset();
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    rt.sleep(ms(10)).await;
    let probes: Vec<_> = (0..2)
        .map(|i| {
            breaker
                .try_acquire()
                .unwrap_or_else(|e| panic!("probe {i}: {e}"))
        })
        .collect();
    assert!(breaker.try_acquire().is_err(), "a third probe");
    for p in probes {
        p.success();
    }
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn callers_waiting_on_a_breaker_cancelled_at_random_leak_no_probe_on_every_runtime() {
    on_every_runtime!(breaker_wait_storm);
}

// Docs (breaker): "max_half_open_wait reopens a breaker whose probes hang (measured from the
// first probe in flight), so it can never stay stuck half-open". A probe taken in poll_ready
// by a service that never calls is such a hanging probe: the callers waiting behind it must
// get through.
#[test]
fn a_probe_held_from_poll_ready_by_an_idle_service_cannot_keep_other_waiters_out_forever() {
    let clock = FakeClock::new();
    let poller = Poller::new();
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(ms(100))
        .half_open_probes(1)
        .max_half_open_wait(Some(Duration::from_secs(1)))
        .runtime(clock.clone())
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    clock.advance(ms(100));
    let layer = BreakerLayer::new(breaker.clone()).wait_in_ready(None);
    let mut idle = layer.layer(Answer::default());
    assert_eq!(poller.ready(&mut idle), Poll::Ready(Ok(())), "the probe");
    let mut waiter = layer.layer(Answer::default());
    let start = clock.now();
    let out = settle(&clock, &poller, start + HOUR, |cx| waiter.poll_ready(cx));
    assert_eq!(out, Some(Ok(())), "the waiter got through");
    assert!(
        clock.now() - start <= Duration::from_secs(10),
        "after {:?}",
        clock.now() - start
    );
    assert_eq!(poller.poll(pin!(waiter.call(Ok(1)))), Poll::Ready(Ok(1)));
    assert_eq!(breaker.state(), State::Closed);
    // The idle service's stale probe, called at last, moves nothing.
    assert!(poller.poll(pin!(idle.call(Err("late")))).is_ready());
    assert_eq!(
        breaker.state(),
        State::Closed,
        "a stale outcome moved the breaker"
    );
}
