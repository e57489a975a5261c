//! Circuit breaker scenarios: transitions, exact half-open probes, cancellation and panics.

mod common;

use common::ms;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use tidewall::breaker::{CircuitBreaker, Outcome, State, TripReason, Window};
use tidewall::rt::{Clock, Runtime, Spawn, TaskHandle, Tokio};
use tidewall::testing::Clocked;
use tidewall::{Error, FutureExt, Rejected};

fn tripped_breaker(clock: &Clocked<Tokio>, probes: u32) -> CircuitBreaker<Clocked<Tokio>> {
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .break_duration(ms(100))
        .half_open_probes(probes)
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    breaker
}

#[test]
fn sixteen_racing_callers_get_exactly_one_probe_over_200_rounds() {
    let rt = Clocked::new(Tokio);
    let breaker = tripped_breaker(&rt, 1);
    for round in 0..200 {
        rt.clock().advance(ms(100));
        let barrier = Arc::new(Barrier::new(16));
        let admitted = Arc::new(AtomicUsize::new(0));
        let held = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|s| {
            for _ in 0..16 {
                let (barrier, admitted, held, breaker) = (&barrier, &admitted, &held, &breaker);
                s.spawn(move || {
                    barrier.wait();
                    if let Ok(permit) = breaker.try_acquire_owned() {
                        assert!(permit.is_probe());
                        admitted.fetch_add(1, Ordering::SeqCst);
                        held.lock().unwrap().push(permit);
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::SeqCst), 1, "round {round}");
        // The probe fails: open again for the next round.
        held.lock().unwrap().pop().unwrap().failure();
        assert_eq!(breaker.state(), State::Open);
    }
}

async fn dropped_probe_then_recovery<R: Runtime>(rt: Clocked<R>) {
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(2)
        .break_duration(ms(50))
        .build()
        .unwrap();
    for _ in 0..2 {
        let _ = breaker.call(|| async { Err::<(), _>("down") }).await;
    }
    assert_eq!(breaker.state(), State::Open);
    let open = breaker.call(|| async { Ok::<_, &str>(()) }).await;
    assert!(
        matches!(open, Err(Error::Rejected(Rejected::CircuitOpen { retry_after })) if retry_after == ms(50))
    );

    rt.sleep(ms(50)).await;
    // A probe that hangs and is cancelled by a timeout: it records nothing, gives its slot back.
    let hung = breaker
        .call(|| rt.sleep(ms(1_000)).map_ok())
        .timeout_on(&rt, ms(10))
        .await;
    assert!(hung.is_err());
    assert_eq!(breaker.state(), State::HalfOpen);
    // A task holding a probe is aborted mid-flight.
    let task = {
        let (breaker, rt2) = (breaker.clone(), rt.clone());
        rt.spawn(async move { breaker.call(|| rt2.sleep(ms(1_000)).map_ok()).await })
    };
    rt.sleep(ms(1)).await;
    task.abort();
    let _ = task.await;
    breaker.call(|| async { Ok::<_, &str>(()) }).await.unwrap();
    assert_eq!(breaker.state(), State::Closed);
}

trait MapOk: std::future::Future<Output = ()> + Sized {
    fn map_ok(self) -> impl std::future::Future<Output = Result<(), &'static str>> {
        async move {
            self.await;
            Ok(())
        }
    }
}
impl<F: std::future::Future<Output = ()>> MapOk for F {}

#[test]
fn a_dropped_probe_does_not_block_recovery_on_every_runtime() {
    on_every_runtime!(dropped_probe_then_recovery);
}

#[test]
fn a_panicking_probe_returns_its_slot() {
    let rt = Clocked::new(Tokio);
    let breaker = tripped_breaker(&rt, 1);
    rt.clock().advance(ms(100));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _probe = breaker.try_acquire().unwrap();
        panic!("probe panicked");
    }));
    assert!(result.is_err());
    assert_eq!(breaker.state(), State::HalfOpen);
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Closed);
    // 1000 healthy calls afterwards all pass (circuitbreaker-rs rejected all of them).
    for _ in 0..1000 {
        breaker.try_acquire().unwrap().success();
    }
}

#[test]
fn stale_permits_never_move_the_current_state() {
    let rt = Clocked::new(Tokio);
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(ms(10))
        .half_open_probes(2)
        .build()
        .unwrap();
    let old = breaker.try_acquire().unwrap();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    rt.clock().advance(ms(10));
    let probe = breaker.try_acquire().unwrap();
    assert_eq!(breaker.state(), State::HalfOpen);
    old.success(); // from the closed generation: ignored, must not count as a probe success
    probe.success();
    assert_eq!(
        breaker.state(),
        State::HalfOpen,
        "one of two probe successes so far"
    );
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn failure_rate_over_a_count_window_with_minimum_calls() {
    let breaker = CircuitBreaker::builder()
        .runtime(Clocked::new(Tokio))
        .failure_rate(0.5)
        .minimum_calls(4)
        .window(Window::Count { calls: 4 })
        .build()
        .unwrap();
    for outcome in [Outcome::Failure, Outcome::Failure, Outcome::Success] {
        breaker.try_acquire().unwrap().record(outcome);
    }
    assert_eq!(breaker.state(), State::Closed, "3 calls < minimum 4");
    breaker.try_acquire().unwrap().record(Outcome::Ignored);
    assert_eq!(
        breaker.counts().calls,
        3,
        "ignored outcomes are not recorded"
    );
    // The fourth call reaches the minimum with 2 of 4 failed (50 %): every recorded outcome
    // is evaluated, so this success is the call that trips the breaker.
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Open, "2 of 4 failed");
}

#[test]
fn time_window_forgets_old_failures_and_slow_calls_trip() {
    let rt = Clocked::new(Tokio);
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .failure_rate(0.5)
        .slow_call_rate(0.5, ms(100))
        .minimum_calls(2)
        .window(Window::Time {
            span: Duration::from_secs(1),
            buckets: 10,
        })
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    rt.clock().advance(Duration::from_secs(1));
    breaker.try_acquire().unwrap().success();
    breaker.try_acquire().unwrap().success();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.counts().calls, 3, "the first failure slid out");
    assert_eq!(breaker.state(), State::Closed, "1 of 3 failed");

    let slow = breaker.try_acquire().unwrap();
    rt.clock().advance(ms(150));
    slow.success();
    let slow = breaker.try_acquire().unwrap();
    rt.clock().advance(ms(150));
    slow.success();
    // 2 slow of 5 — then a third
    let slow = breaker.try_acquire().unwrap();
    rt.clock().advance(ms(100));
    slow.success();
    assert_eq!(breaker.state(), State::Open, "3 slow of 6 calls = 50 %");
}

#[test]
fn half_open_max_wait_reopens_a_stuck_breaker_and_breaks_grow() {
    let rt = Clocked::new(Tokio);
    let backoff = tidewall::Backoff::exponential(ms(100))
        .factor(2.0)
        .jitter(tidewall::Jitter::None)
        .max_delay(ms(1000))
        .max_attempts(10)
        .build()
        .unwrap();
    let changes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&changes);
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_backoff(backoff)
        .max_half_open_wait(Some(ms(500)))
        .on_state_change(move |c| seen.lock().unwrap().push((c.to, c.reason)))
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    rt.clock().advance(ms(100));
    let hung = breaker.try_acquire().unwrap();
    assert!(
        matches!(breaker.try_acquire(), Err(Rejected::CircuitOpen { retry_after }) if retry_after == ms(100))
    );
    rt.clock().advance(ms(500));
    // The probe hung past the max wait: the next caller reopens the breaker, for 200 ms now.
    assert!(
        matches!(breaker.try_acquire(), Err(Rejected::CircuitOpen { retry_after }) if retry_after == ms(200))
    );
    hung.success(); // too late, ignored
    assert_eq!(breaker.state(), State::Open);
    rt.clock().advance(ms(200));
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(
        *changes.lock().unwrap(),
        [
            (State::Open, Some(TripReason::ConsecutiveFailures)),
            (State::HalfOpen, None),
            (State::Open, Some(TripReason::HalfOpenTimeout)),
            (State::HalfOpen, None),
            (State::Closed, None),
        ]
    );
}

#[test]
fn manual_force_open_force_closed_and_reset() {
    let breaker = CircuitBreaker::builder()
        .runtime(Clocked::new(Tokio))
        .consecutive_failures(1)
        .build()
        .unwrap();
    breaker.force_open();
    assert!(breaker.try_acquire().is_err());
    breaker.force_closed();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(
        breaker.state(),
        State::ForcedClosed,
        "forced closed never trips"
    );
    breaker.reset();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn probe_cancellation_storm_leaves_every_slot_free() {
    let rt = Clocked::new(Tokio);
    let breaker = tripped_breaker(&rt, 8);
    rt.clock().advance(ms(100));
    let mut rng = tidewall_core_rng(42);
    let mut held = Vec::new();
    for _ in 0..100_000 {
        if rng().is_multiple_of(2) || held.len() == 8 {
            if !held.is_empty() {
                let i = usize::try_from(rng() % held.len() as u64).unwrap();
                drop(held.swap_remove(i));
            }
        } else if let Ok(p) = breaker.try_acquire() {
            held.push(p);
        }
    }
    held.clear();
    let all: Vec<_> = (0..8).map(|_| breaker.try_acquire().unwrap()).collect();
    assert!(breaker.try_acquire().is_err(), "exactly 8 slots");
    for p in all {
        p.success();
    }
    assert_eq!(breaker.state(), State::Closed);
}

fn tidewall_core_rng(seed: u64) -> impl FnMut() -> u64 {
    let mut rng = tidewall_core::rng::SplitMix64::new(seed);
    move || rng.next_u64()
}

/// `force_open_if` and `reset_if` act only on the generation they were given: a transition
/// since (a trip, a break ending, a force by hand) makes them do nothing, and each
/// transition, forced or not, moves the generation on by one, as its event says.
#[test]
fn conditional_forces_act_only_on_the_generation_they_saw() {
    let clock = Clocked::new(Tokio);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let events = Arc::clone(&seen);
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .break_duration(ms(100))
        .on_state_change(move |change| events.lock().unwrap().push(change.generation))
        .build()
        .unwrap();
    let (state, fresh) = breaker.state_and_generation();
    assert_eq!(state, State::Closed);

    // A trip between the read and the force: the force does nothing.
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.force_open_if(fresh), None);
    assert_eq!(
        breaker.state_and_generation(),
        (State::Open, fresh.wrapping_add(1))
    );
    assert!(!breaker.reset_if(fresh));
    assert_eq!(breaker.state(), State::Open);

    // The break ends (a probe admitted: half-open), so the open generation is stale too.
    let (_, open) = breaker.state_and_generation();
    clock.clock().advance(ms(100));
    breaker.try_acquire().unwrap().success();
    assert_eq!(breaker.state(), State::Closed);
    assert!(!breaker.reset_if(open));

    // Ours, then forced by hand on top: not ours to undo; undone only with the latest one.
    let (_, closed) = breaker.state_and_generation();
    let ours = breaker.force_open_if(closed).unwrap();
    assert_eq!(ours, closed.wrapping_add(1));
    breaker.force_open();
    assert!(!breaker.reset_if(ours));
    assert_eq!(breaker.state(), State::ForcedOpen);
    let (_, by_hand) = breaker.state_and_generation();
    assert!(breaker.reset_if(by_hand));
    assert_eq!(breaker.state(), State::Closed);

    let generations = seen.lock().unwrap().clone();
    let expected: Vec<u32> = (1..=u32::try_from(generations.len()).unwrap())
        .map(|n| fresh.wrapping_add(n))
        .collect();
    assert_eq!(
        generations, expected,
        "one step per transition, each announced"
    );
}
