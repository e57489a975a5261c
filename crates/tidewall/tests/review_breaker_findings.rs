//! Regression tests for a code review of the circuit breaker, the keyed tables and the rate
//! limiter: one test per finding, each asserting what the public docs promise (quoted above
//! it), so a test fails while the finding's bug is real. Virtual time only; the scenarios that
//! may deadlock run on a spawned thread under a real-time hang detector (a bound on hanging,
//! never a timing assertion).
#![cfg(all(feature = "tokio", feature = "test-util"))]

#[path = "common/hang.rs"]
mod hang;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::noop_waker_ref;
use tidewall::admission::QueueDiscipline;
use tidewall::breaker::{CircuitBreaker, KeyedCircuitBreaker, State, Window};
use tidewall::bulkhead::{Bulkhead, KeyedBulkhead};
use tidewall::rate::KeyedRateLimiter;
use tidewall::rt::Tokio;
use tidewall::telemetry::EventKind;
use tidewall::testing::{Clocked, FakeClock};
use tidewall::{Backoff, ConfigError, Deadline, Jitter, Rejected, RetryAfter};

use hang::without_hanging;

type Rt = Clocked<Tokio>;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The `retry_after` of the breaker's refusal now; panics if it admits.
fn refusal_hint(breaker: &CircuitBreaker<Rt>) -> Duration {
    match breaker.try_acquire() {
        Err(Rejected::CircuitOpen { retry_after }) => retry_after,
        Err(other) => panic!("refused with {other:?}, not CircuitOpen"),
        Ok(permit) => panic!("admitted (probe: {})", permit.is_probe()),
    }
}

// ---------------------------------------------------------------------------------------
// Finding 1. breaker/mod.rs (module docs): "max_half_open_wait reopens a breaker whose probes
// hang (measured from the first probe in flight), so it can never stay stuck half-open".
// Lowering `half_open_probes` below the successes a half-open breaker already counted must
// not leave it refusing every caller forever.
#[test]
fn finding_01_lowering_half_open_probes_while_half_open_never_sticks() {
    let clock = Clocked::new(Tokio);
    let settings = |probes| {
        CircuitBreaker::builder()
            .consecutive_failures(1)
            .break_duration(secs(1))
            .half_open_probes(probes)
    };
    let breaker = settings(2).runtime(clock.clone()).build().unwrap();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    clock.clock().advance(secs(1));
    let probe = breaker
        .try_acquire()
        .expect("the first probe after the break");
    assert!(probe.is_probe());
    probe.success(); // one of the two successes needed
    assert_eq!(breaker.state(), State::HalfOpen);

    breaker.reconfigure(settings(1)).unwrap();
    // Well past every documented wait (the break, and the default 60 s max_half_open_wait).
    for _ in 0..5 {
        if breaker.state() == State::Closed || breaker.try_acquire().is_ok() {
            return;
        }
        clock.clock().advance(secs(61));
    }
    panic!(
        "stuck: state {:?}, every call refused with {:?}, 5 min after the reconfigure",
        breaker.state(),
        breaker.try_acquire().err()
    );
}

// ---------------------------------------------------------------------------------------
// Finding 2a. KeyedCircuitBreakerBuilder::on_state_change: "Called on every state change of
// any key's breaker, with the key, on the thread that caused it (keep it short)", and
// KeyedCircuitBreaker::reconfigure's own comment: "its state-change listeners may call back
// into the table". A listener reading the table (`state(&key)`) must neither deadlock nor
// panic when the transition (open -> half-open) happens inside `try_acquire`.
#[test]
fn finding_02a_keyed_breaker_listener_may_read_the_table() {
    without_hanging("a keyed breaker listener calling state(&key)", || {
        let clock = Clocked::new(Tokio);
        let table: Arc<OnceLock<KeyedCircuitBreaker<&'static str, Rt>>> = Arc::new(OnceLock::new());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (inside, log) = (Arc::clone(&table), Arc::clone(&seen));
        let breakers = CircuitBreaker::builder()
            .runtime(clock.clone())
            .consecutive_failures(1)
            .break_duration(secs(1))
            .keyed()
            .on_state_change(move |key: &&'static str, change| {
                let read = inside.get().and_then(|table| table.state(key));
                log.lock().unwrap().push((change.to, read));
            })
            .build()
            .unwrap();
        assert!(table.set(breakers.clone()).is_ok());

        breakers.try_acquire(&"a").unwrap().failure();
        assert_eq!(breakers.state(&"a"), Some(State::Open));
        clock.clock().advance(secs(1));
        let probe = breakers.try_acquire(&"a").expect("a probe after the break");
        assert!(probe.is_probe());
        drop(probe);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
    });
}

// Finding 2b. KeyedBulkhead: "A key's bulkhead is made on its first call and behaves exactly
// as a Bulkhead"; BulkheadBuilder::on_event: "Calls listener with everything the bulkhead
// does: each refusal with its reason ... On the caller's thread, in the call". A listener that
// reads the table (`in_flight(&key)`) on a refusal must neither deadlock nor panic.
#[test]
fn finding_02b_keyed_bulkhead_listener_may_read_the_table() {
    without_hanging("a keyed bulkhead listener calling in_flight(&key)", || {
        let table: Arc<OnceLock<KeyedBulkhead<&'static str, FakeClock>>> =
            Arc::new(OnceLock::new());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (inside, log) = (Arc::clone(&table), Arc::clone(&seen));
        let bulkheads = Bulkhead::builder(1)
            .reject_when_full()
            .runtime(FakeClock::new())
            .on_event(move |event| {
                if let EventKind::Rejected(_) = event.kind
                    && let Some(table) = inside.get()
                {
                    log.lock().unwrap().push(table.in_flight(&"a"));
                }
            })
            .keyed()
            .build::<&'static str>()
            .unwrap();
        assert!(table.set(bulkheads.clone()).is_ok());

        let held = bulkheads.try_acquire(&"a").unwrap();
        assert_eq!(
            bulkheads.try_acquire(&"a").err(),
            Some(Rejected::BulkheadFull)
        );
        drop(held);
        assert_eq!(*seen.lock().unwrap(), [1]);
    });
}

// ---------------------------------------------------------------------------------------
// Finding 3. BreakerPolicyBuilder::build, # Errors: "... zero probes, zero break duration or
// durations that overflow"; break_backoff: "the k-th trip in a row ... stays open for the k-th
// delay of backoff". A backoff whose delays are all zero is a zero break duration, which
// `break_duration(ZERO)` is refused for.
#[test]
fn finding_03_an_all_zero_break_backoff_is_refused_like_a_zero_break_duration() {
    assert!(matches!(
        CircuitBreaker::builder()
            .break_duration(Duration::ZERO)
            .build(),
        Err(ConfigError::Zero { .. })
    ));
    let zero = Backoff::constant(Duration::ZERO)
        .jitter(Jitter::None)
        .build()
        .expect("a zero retry backoff is valid for retries");
    let built = CircuitBreaker::builder().break_backoff(zero).build();
    assert!(
        built.is_err(),
        "a break schedule of zero-length breaks was accepted: {built:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Finding 4. CircuitBreaker::reconfigure: "A window of the same shape is kept, with the state,
// the calls in it and the run of failures ... Calls in flight keep their permits either way";
// BreakerPolicyBuilder::slow_call_rate: "Trip when at least rate ... of the window's calls
// took threshold or longer". A call that took no time at all is not slow, whenever the
// slow-call rule was added.
#[test]
fn finding_04_a_slow_rule_added_mid_call_does_not_judge_the_call_slow() {
    let clock = Clocked::new(Tokio);
    let base = || {
        CircuitBreaker::builder()
            .window(Window::Count { calls: 10 })
            .minimum_calls(1)
    };
    let breaker = base().runtime(clock.clone()).build().unwrap();
    clock.clock().advance(secs(10));
    let permit = breaker.try_acquire().unwrap();
    let how = breaker
        .reconfigure(base().slow_call_rate(0.5, secs(1)))
        .unwrap();
    assert_eq!(how, tidewall::breaker::Reconfigured::Kept);
    permit.success(); // no virtual time passed: the call took 0 s
    assert_eq!(
        (breaker.state(), breaker.counts().slow),
        (State::Closed, 0),
        "a 0 s call counted as slow"
    );
}

// ---------------------------------------------------------------------------------------
// Finding 5. BreakerPolicyBuilder::break_backoff: "Stay open longer on repeated trips: the
// k-th trip in a row (without a successful close in between) stays open for the k-th delay of
// backoff"; CircuitBreaker::reconfigure: "A window of the same shape is kept, with the state
// ... (the next break follows the new schedule)". A reconfigure with the same settings is no
// successful close: the 4th trip in a row stays open for the 4th delay.
#[test]
fn finding_05_a_same_settings_reconfigure_keeps_the_break_escalation() {
    let clock = Clocked::new(Tokio);
    let backoff = Backoff::exponential(secs(1))
        .jitter(Jitter::None)
        .max_attempts(10)
        .max_delay(secs(60))
        .build()
        .unwrap();
    let settings = || {
        CircuitBreaker::builder()
            .consecutive_failures(1)
            .break_backoff(backoff)
    };
    let breaker = settings().runtime(clock.clone()).build().unwrap();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(refusal_hint(&breaker), secs(1));
    for expected in [2, 4] {
        clock.clock().advance(refusal_hint(&breaker));
        let probe = breaker.try_acquire().unwrap();
        assert!(probe.is_probe());
        probe.failure();
        assert_eq!(refusal_hint(&breaker), secs(expected));
    }
    let how = breaker.reconfigure(settings()).unwrap();
    assert_eq!(how, tidewall::breaker::Reconfigured::Kept);
    assert_eq!(refusal_hint(&breaker), secs(4), "the current break stands");
    clock.clock().advance(secs(4));
    breaker.try_acquire().unwrap().failure(); // the 4th trip in a row
    assert_eq!(
        refusal_hint(&breaker),
        secs(8),
        "the escalation restarted after a reconfigure that changed nothing"
    );
}

// ---------------------------------------------------------------------------------------
// Finding 6. KeyedCircuitBreaker: "A key is forgotten ... only when nothing depends on it:
// its breaker is closed, no permit ... is out, and either its window is empty or it has not
// been used for idle_ttl. So an eviction forgets at most the failures of a window no call has
// touched for idle_ttl." max_keys(1) makes one shard of one place ("one shard up to 511
// keys"). A failure recorded just now touched the window: the key may not go.
#[test]
fn finding_06_a_failure_recorded_now_keeps_its_key_for_idle_ttl() {
    let clock = Clocked::new(Tokio);
    let breakers = CircuitBreaker::builder()
        .runtime(clock.clone())
        .failure_rate(0.5)
        .minimum_calls(10) // one failure does not trip
        .keyed::<&'static str>()
        .max_keys(1)
        .idle_ttl(secs(1))
        .build()
        .unwrap();
    let permit = breakers.try_acquire(&"a").unwrap();
    clock.clock().advance(secs(2)); // a call longer than idle_ttl
    permit.failure();
    assert_eq!(breakers.state(&"a"), Some(State::Closed));
    assert_eq!(breakers.counts(&"a").map(|c| c.failures), Some(1));
    let b = breakers.try_acquire(&"b");
    assert!(
        matches!(b, Err(Rejected::KeysFull { .. })),
        "key b was admitted ({}), evicting a's failure recorded 0 s ago (evicted: {})",
        b.is_ok(),
        breakers.evicted()
    );
    assert_eq!(breakers.counts(&"a").map(|c| c.failures), Some(1));
}

// ---------------------------------------------------------------------------------------
// Finding 7. CircuitBreaker::reconfigure: "The new thresholds judge them at once"; module docs: "Every outcome decides: the thresholds are evaluated after every
// recorded outcome, successes included". Window S,S,F,F under 75 %, then 50 %: the next
// success leaves S,F,F,S = 50 %, which trips ("a rate equal to it trips").
#[test]
fn finding_07_a_success_over_a_success_is_judged_by_lowered_thresholds() {
    let clock = Clocked::new(Tokio);
    let settings = |rate| {
        CircuitBreaker::builder()
            .window(Window::Count { calls: 4 })
            .failure_rate(rate)
            .minimum_calls(4)
    };
    let breaker = settings(0.75).runtime(clock.clone()).build().unwrap();
    for failed in [false, false, true, true] {
        let permit = breaker.try_acquire().unwrap();
        if failed {
            permit.failure()
        } else {
            permit.success()
        }
    }
    assert_eq!(breaker.state(), State::Closed, "2 of 4 is under 75 %");
    // The docs now say the new thresholds judge the window at once: 2 of 4 under 50 % trips
    // on the reconfigure itself, before any further outcome.
    let how = breaker.reconfigure(settings(0.5)).unwrap();
    assert_eq!(how, tidewall::breaker::Reconfigured::Kept);
    let counts = breaker.counts();
    assert_eq!((counts.calls, counts.failures), (4, 2));
    assert_eq!(
        breaker.state(),
        State::Open,
        "50 % failed under a 50 % threshold"
    );
}

// ---------------------------------------------------------------------------------------
// Finding 8. CircuitBreaker::force_open: "it stays open until reset. Its refusals hint the
// first break as their retry_after (a force has no end a hint could name)". The contract was
// settled by this finding: the hint is a pace to ask again at, never an end.
#[test]
fn finding_08_a_forced_open_refusal_hints_its_first_break_as_a_pace() {
    let clock = Clocked::new(Tokio);
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .break_duration(secs(1))
        .build()
        .unwrap();
    breaker.force_open();
    let refused = breaker.try_acquire().expect_err("forced open");
    clock.clock().advance(refusal_hint(&breaker));
    assert!(
        breaker.try_acquire().is_err(),
        "force_open: open until reset"
    );
    assert_eq!(
        refused.retry_after(),
        Some(secs(1)),
        "a forced-open breaker hints its first break: {refused:?}"
    );
    assert!(breaker.try_acquire().is_err(), "still open after the hint");
}

// ---------------------------------------------------------------------------------------
// Finding 9. Gcra::decide: "cells == 0 always passes and returns tat itself";
// KeyedRateLimiter::check_key_n (settled by this finding): "Zero cells take nothing and always
// pass, for a new key in a full shard too, and store nothing."
#[test]
fn finding_09_zero_cells_pass_for_a_new_key_in_a_full_shard() {
    let clock = FakeClock::new();
    let limiter = KeyedRateLimiter::builder(1, secs(1))
        .burst(1)
        .max_keys(1)
        .runtime(clock.clone())
        .build::<u32>()
        .unwrap();
    limiter.check_key(&1).unwrap(); // key 1 now holds the one place, not rested for 1 s
    assert!(matches!(
        limiter.check_key(&2),
        Err(Rejected::RateLimited { .. })
    ));
    assert_eq!(limiter.check_key_n(&2, 0), Ok(()), "zero cells always pass");
}

// ---------------------------------------------------------------------------------------
// Finding 10. KeyedBulkhead::reconfigure: "Each key's bulkhead changes as
// Bulkhead::reconfigure says"; Bulkhead::reconfigure: "Applies settings to this bulkhead in
// place (its name and runtime are not changed)"; BulkheadBuilder::discipline: "The order the
// queue admits waiters in". FIFO -> LIFO: the newer of two waiters is served first.
#[test]
fn finding_10_keyed_bulkhead_reconfigure_applies_the_discipline() {
    type Waiting = Pin<
        Box<
            dyn Future<Output = Result<tidewall::bulkhead::OwnedPermit<FakeClock>, Rejected>>
                + Send,
        >,
    >;
    let poll = |w: &mut Waiting| w.as_mut().poll(&mut Context::from_waker(noop_waker_ref()));
    let settings = |discipline| {
        Bulkhead::builder(1)
            .max_queue(2)
            .max_wait(None)
            .discipline(discipline)
    };
    let clock = FakeClock::new();
    let bulkheads = settings(QueueDiscipline::Fifo)
        .runtime(clock.clone())
        .keyed()
        .build::<&'static str>()
        .unwrap();
    let held = bulkheads.try_acquire(&"k").unwrap();
    let mut older: Waiting = Box::pin(bulkheads.acquire_before(&"k", Deadline::none()));
    let mut newer: Waiting = Box::pin(bulkheads.acquire_before(&"k", Deadline::none()));
    assert!(poll(&mut older).is_pending());
    assert!(poll(&mut newer).is_pending());
    assert_eq!(bulkheads.get(&"k").unwrap().queued(), 2);

    bulkheads
        .reconfigure(settings(QueueDiscipline::Lifo))
        .unwrap();
    drop(held);
    let (older_now, newer_now) = (poll(&mut older), poll(&mut newer));
    assert!(
        matches!(newer_now, Poll::Ready(Ok(_))) && older_now.is_pending(),
        "LIFO serves the newer waiter: older {older_now:?}, newer {newer_now:?}"
    );
    // The same check on a key made after the reconfigure.
    let held = bulkheads.try_acquire(&"new").unwrap();
    let mut older: Waiting = Box::pin(bulkheads.acquire_before(&"new", Deadline::none()));
    let mut newer: Waiting = Box::pin(bulkheads.acquire_before(&"new", Deadline::none()));
    assert!(poll(&mut older).is_pending());
    assert!(poll(&mut newer).is_pending());
    drop(held);
    let (older_now, newer_now) = (poll(&mut older), poll(&mut newer));
    assert!(
        matches!(newer_now, Poll::Ready(Ok(_))) && older_now.is_pending(),
        "a new key after the reconfigure is LIFO too: older {older_now:?}, newer {newer_now:?}"
    );
}
