#![cfg(all(
    feature = "tokio",
    feature = "test-util",
    feature = "toml",
    feature = "http",
    feature = "tower"
))]
//! Hostile black-box tests, from the public docs alone, of one contract: a breaker forced
//! open or closed by hand stays forced through a reconfiguration that reshapes its window
//! (`Reconfigured::KeptForced`: the same generation, no state-change event), a
//! keyed table's `get_or_make` pins a key that is forced or whose handle is held, and the HTTP
//! client and the registry keep a forced host out of rotation through every reload that keeps
//! the table.
//!
//! Time is virtual (`FakeClock`, tokio's paused clock), randomness seeded (xorshift); the only
//! real wait is the hang detector's, which fires only on a deadlock.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use support::forced::{
    Changes, OUTBOUND, changes_of, down_before_its_first_request, force, listened, reload_window,
    request, take,
};
use tidewall::breaker::{
    CircuitBreaker, CircuitBreakerBuilder, KeyedCircuitBreaker, OwnedPermit, Reconfigured, State,
    Window,
};
use tidewall::config::{Config, Registry};
use tidewall::http::{Authority, ClientPolicies, ClientPoliciesBuilder};
use tidewall::pipeline::Pipeline;
use tidewall::telemetry::EventKind;
use tidewall::testing::FakeClock;
use tidewall::tower::BreakerLayer;
use tidewall::{Error, Rejected};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

const BREAK: Duration = Duration::from_secs(5);
const HOUR: Duration = Duration::from_secs(3_600);

// === helpers ===============================================================================

/// A fixed-seed xorshift64*.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Two failures in a row open it for `BREAK`; no rate.
fn count(calls: u32) -> CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(2)
        .window(Window::Count { calls })
        .break_duration(BREAK)
}

fn time_window(secs: u64) -> CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(2)
        .window(Window::Time {
            span: Duration::from_secs(secs),
            buckets: 10,
        })
        .break_duration(BREAK)
}

/// Runs `f` on its own thread; a deadlock fails the test instead of hanging it.
fn without_hanging<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, wait) = mpsc::channel();
    let worker = std::thread::spawn(move || {
        let out = f();
        let _ = done.send(());
        out
    });
    match wait.recv_timeout(Duration::from_secs(120)) {
        Ok(()) => worker.join().unwrap(),
        // The sender was dropped: `f` panicked; show its panic.
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: deadlocked"),
    }
}

/// Drives a fresh breaker on `clock` into `state`; the permit it still holds (a half-open
/// probe), if any. Closed and forced states have one failure recorded before.
fn drive_to(
    breaker: &CircuitBreaker<FakeClock>,
    clock: &FakeClock,
    state: State,
) -> Option<OwnedPermit<FakeClock>> {
    breaker.try_acquire().unwrap().failure();
    let mut probe = None;
    match state {
        State::Closed => {}
        State::Open => breaker.try_acquire().unwrap().failure(),
        State::HalfOpen => {
            breaker.try_acquire().unwrap().failure();
            assert_eq!(breaker.state(), State::Open);
            clock.advance(BREAK);
            let permit = breaker
                .try_acquire_owned()
                .expect("a probe after the break");
            assert!(permit.is_probe());
            probe = Some(permit);
        }
        State::ForcedOpen => breaker.force_open(),
        State::ForcedClosed => breaker.force_closed(),
        other => panic!("no such state: {other:?}"),
    }
    assert_eq!(breaker.state(), state, "set up");
    probe
}

/// The state changes `reset` by hand tells, for a fresh breaker on `clock` driven into `state`.
fn told_by_a_reset(clock: &FakeClock, state: State) -> Vec<String> {
    let (twin, changes) = listened(count(10).runtime(clock.clone()));
    let _probe = drive_to(&twin, clock, state);
    take(&changes);
    twin.reset();
    take(&changes)
}

/// Asserts that `breaker`'s run of failures starts now: one failure leaves it closed (else
/// `closed`, the message), a second opens it (else `open`).
#[track_caller]
fn trips_on_a_second_failure(breaker: &CircuitBreaker<FakeClock>, closed: &str, open: &str) {
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Closed, "{closed}");
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open, "{open}");
}

/// A fresh clock, and a table of `count(10)` breakers on it holding at most `max_keys` keys,
/// each forgotten once idle for `idle_ttl`.
fn keyed_on_a_clock(
    max_keys: usize,
    idle_ttl: Duration,
) -> (FakeClock, KeyedCircuitBreaker<u32, FakeClock>) {
    let clock = FakeClock::new();
    let table = count(10)
        .runtime(clock.clone())
        .keyed::<u32>()
        .max_keys(max_keys)
        .idle_ttl(idle_ttl)
        .build()
        .unwrap();
    (clock, table)
}

// === 1. CircuitBreaker::reconfigure over every state =======================================

/// `reconfigure`: "A window of the same shape is kept, with the state, the calls in it and the
/// run of failures ... A window of another shape (length or kind) cannot hold the old calls:
/// the breaker is reset, with its state-change event (`Reconfigured::Reset`), unless it was
/// forced open or closed by hand: it then stays forced, on an empty window of the new shape
/// (`Reconfigured::KeptForced`) ... Calls in flight keep their permits either way; after a
/// reset their outcomes are ignored". `Reconfigured::KeptForced`: "with no state-change event.
/// Calls admitted before are dropped from it, as after a reset."
#[test]
fn every_state_through_a_reshape_and_through_a_kept_shape() {
    for state in State::ALL {
        for reshape in [false, true] {
            let what = format!("{state:?}, reshape {reshape}");
            let clock = FakeClock::new();
            let (breaker, changes) = listened(count(10).runtime(clock.clone()));
            let probe = drive_to(&breaker, &clock, state);
            // A call admitted before the reconfiguration, ended after it.
            let early = match state {
                State::HalfOpen => probe,
                State::Closed | State::ForcedClosed => Some(breaker.try_acquire_owned().unwrap()),
                _ => None,
            };
            take(&changes);
            let before = breaker.counts();

            // The twin: what `reset` by hand tells, for a breaker set up the same way.
            let reset_by_hand = told_by_a_reset(&clock, state);

            let settings = if reshape {
                count(20)
            } else {
                count(10).consecutive_failures(3)
            };
            let how = breaker.reconfigure(settings).unwrap();
            let forced = matches!(state, State::ForcedOpen | State::ForcedClosed);
            match (reshape, forced) {
                (false, _) => {
                    assert_eq!(how, Reconfigured::Kept, "{what}");
                    assert_eq!(breaker.state(), state, "{what}: state kept");
                    assert_eq!(breaker.counts(), before, "{what}: window kept");
                    assert_eq!(take(&changes), Vec::<String>::new(), "{what}: no event");
                }
                (true, true) => {
                    assert_eq!(how, Reconfigured::KeptForced, "{what}");
                    assert_eq!(breaker.state(), state, "{what}: stays forced");
                    assert_eq!(breaker.counts().calls, 0, "{what}: an empty window");
                    assert_eq!(take(&changes), Vec::<String>::new(), "{what}: no event");
                }
                (true, false) => {
                    assert_eq!(how, Reconfigured::Reset, "{what}");
                    assert_eq!(breaker.state(), State::Closed, "{what}: reset");
                    assert_eq!(breaker.counts().calls, 0, "{what}: an empty window");
                    assert_eq!(
                        take(&changes),
                        reset_by_hand,
                        "{what}: the events `reset` tells"
                    );
                    if state != State::Closed {
                        assert_eq!(reset_by_hand, [format!("{state} -> closed")], "{what}");
                    }
                }
            }
            assert_eq!(
                breaker.policy().window(),
                Window::Count {
                    calls: if reshape { 20 } else { 10 }
                },
                "{what}"
            );

            // The call admitted before ends in failure.
            if let Some(early) = early {
                early.failure();
                if reshape {
                    assert_eq!(
                        breaker.counts().calls,
                        0,
                        "{what}: an outcome from before the reshape was counted"
                    );
                    let expected = if forced { state } else { State::Closed };
                    assert_eq!(
                        breaker.state(),
                        expected,
                        "{what}: moved by a stale outcome"
                    );
                } else if state == State::HalfOpen {
                    assert_eq!(breaker.state(), State::Open, "{what}: the probe failed");
                } else {
                    assert_eq!(breaker.state(), state, "{what}");
                }
            }
            if reshape && !forced {
                // The run of failures started over: one new failure is not two in a row.
                trips_on_a_second_failure(
                    &breaker,
                    &format!("{what}: a stale run counted"),
                    &format!("{what}: the new window trips"),
                );
            }
        }
    }
}

// === 2. permits from before a kept-forced reshape ==========================================

/// `KeptForced`: "A forced breaker counts no call, so the window stays empty until it is
/// reset." And
/// `reset`: "Back to closed with an empty window". Permits taken while closed (before the
/// force), ended after the reshape (success, failure, ignored, dropped, in seeded order), and
/// permits taken while forced closed, ended after the reset: none counts, and none adds to
/// the run of failures the new window trips on.
#[test]
fn permits_from_before_a_kept_forced_reshape_never_count() {
    for seed in 1..=20u64 {
        for forced in [State::ForcedOpen, State::ForcedClosed] {
            let what = format!("seed {seed}, {forced:?}");
            let mut rng = XorShift::new(seed);
            let clock = FakeClock::new();
            let breaker = count(50).runtime(clock.clone()).build().unwrap();
            let mut permits: Vec<OwnedPermit<FakeClock>> = (0..6)
                .map(|_| breaker.try_acquire_owned().unwrap())
                .collect();
            if forced == State::ForcedOpen {
                breaker.force_open();
            } else {
                breaker.force_closed();
                // Forced closed admits: more calls in flight, admitted while forced.
                permits.extend((0..6).map(|_| breaker.try_acquire_owned().unwrap()));
            }
            assert_eq!(
                breaker.reconfigure(time_window(30)).unwrap(),
                Reconfigured::KeptForced,
                "{what}"
            );
            // Half end now, half after the reset.
            let later = permits.split_off(permits.len() / 2);
            let end = |permit: OwnedPermit<FakeClock>, rng: &mut XorShift| match rng.below(4) {
                0 => permit.success(),
                1 => permit.failure(),
                2 => permit.record(tidewall::breaker::Outcome::Ignored),
                _ => drop(permit),
            };
            for permit in permits {
                end(permit, &mut rng);
            }
            assert_eq!(
                breaker.counts().calls,
                0,
                "{what}: counted in the new window"
            );
            assert_eq!(breaker.state(), forced, "{what}");

            breaker.reset();
            for permit in later {
                end(permit, &mut rng);
            }
            assert_eq!(breaker.state(), State::Closed, "{what}");
            assert_eq!(breaker.counts().calls, 0, "{what}: counted after the reset");
            trips_on_a_second_failure(
                &breaker,
                &format!("{what}: one failure tripped: an old run of failures was carried over"),
                &format!("{what}: the new shape trips"),
            );
        }
    }
}

// === 3. forced closed never trips ==========================================================

/// `State::ForcedClosed`: "Closed by hand: every call passes and nothing trips it until
/// `reset`." `reconfigure` (same shape): "The new thresholds judge them at once (a closed
/// breaker whose window they trip opens now ...)": a forced-closed breaker is not closed in
/// that sense.
#[test]
fn forced_closed_never_trips_through_reshapes_and_lowered_thresholds() {
    let clock = FakeClock::new();
    let (breaker, changes) = listened(count(10).runtime(clock.clone()));
    breaker.force_closed();
    take(&changes);
    let steps: Vec<(CircuitBreakerBuilder, Reconfigured)> = vec![
        (count(5), Reconfigured::KeptForced),
        // The same shape, a threshold the window's failures already pass.
        (count(5).consecutive_failures(1), Reconfigured::Kept),
        (
            CircuitBreaker::builder()
                .failure_rate(0.1)
                .minimum_calls(1)
                .window(Window::Count { calls: 5 }),
            Reconfigured::Kept,
        ),
        (
            time_window(10).consecutive_failures(1),
            Reconfigured::KeptForced,
        ),
        (
            time_window(10)
                .consecutive_failures(1)
                .slow_call_rate(0.1, Duration::from_millis(1)),
            Reconfigured::Kept,
        ),
    ];
    for (step, (settings, expected)) in steps.into_iter().enumerate() {
        for _ in 0..30 {
            let permit = breaker
                .try_acquire()
                .expect("forced closed admits every call");
            clock.advance(Duration::from_millis(10));
            permit.failure();
        }
        assert_eq!(breaker.state(), State::ForcedClosed, "step {step}: tripped");
        assert_eq!(
            breaker.reconfigure(settings).unwrap(),
            expected,
            "step {step}"
        );
        assert_eq!(
            breaker.state(),
            State::ForcedClosed,
            "step {step}: tripped by the new thresholds"
        );
        assert_eq!(
            take(&changes),
            Vec::<String>::new(),
            "step {step}: an event"
        );
    }
    breaker.reset();
    assert_eq!(take(&changes), ["forced_closed -> closed"]);
    assert_eq!(breaker.counts().calls, 0, "reset: an empty window");
    breaker.try_acquire().unwrap().failure();
    assert_eq!(
        breaker.state(),
        State::Open,
        "the last settings trip it at once"
    );
}

// === 4. forced open outlasts every break ===================================================

/// `force_open`: "it stays open until `reset`. Its refusals hint the first break as their
/// `retry_after`". A breaker tripped with a long hint, then forced open, then reshaped with a
/// short break: no break ends a force, and the refusal hints the first break of the policy in
/// force.
#[test]
fn forced_open_outlasts_every_break_and_hints_the_first_break_in_force() {
    let clock = FakeClock::new();
    let breaker = count(10)
        .max_open_hint(HOUR)
        .runtime(clock.clone())
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().record_hinted(
        tidewall::breaker::Outcome::Failure,
        Some(Duration::from_secs(600)),
    );
    assert_eq!(breaker.state(), State::Open);
    breaker.force_open();
    let hint = |b: &CircuitBreaker<FakeClock>| match b.try_acquire() {
        Err(Rejected::CircuitOpen { retry_after }) => retry_after,
        other => panic!(
            "forced open admitted or refused otherwise: {:?}",
            other.map(|_| ())
        ),
    };
    assert_eq!(hint(&breaker), BREAK, "the first break");

    let one_sec = count(20).break_duration(Duration::from_secs(1));
    assert_eq!(
        breaker.reconfigure(one_sec).unwrap(),
        Reconfigured::KeptForced
    );
    assert_eq!(
        hint(&breaker),
        Duration::from_secs(1),
        "the new first break"
    );
    let seven = count(20).break_duration(Duration::from_secs(7));
    assert_eq!(breaker.reconfigure(seven).unwrap(), Reconfigured::Kept);
    assert_eq!(
        hint(&breaker),
        Duration::from_secs(7),
        "the new first break"
    );

    for _ in 0..48 {
        clock.advance(HOUR);
        assert_eq!(breaker.state(), State::ForcedOpen, "a break ended a force");
        assert!(
            breaker.try_acquire().is_err(),
            "a forced-open breaker admitted a call"
        );
    }
    breaker.reset();
    assert!(breaker.try_acquire().is_ok());
}

// === 5. generations ========================================================================

/// `state_and_generation`: "code that changes the breaker on its own behalf ... can later undo
/// its change only if nothing changed the breaker since, with `force_open_if` and `reset_if`".
/// After a kept-forced reshape a generation seen before the force is stale: nothing done.
#[test]
fn stale_generations_do_nothing_after_a_kept_forced_reshape() {
    for forced in [State::ForcedOpen, State::ForcedClosed] {
        let breaker = count(10).build().unwrap();
        let (_, before) = breaker.state_and_generation();
        force(&breaker, forced);
        assert_eq!(
            breaker.reconfigure(count(30)).unwrap(),
            Reconfigured::KeptForced
        );
        let now = breaker.state_and_generation();
        assert_eq!(now.0, forced);
        assert_eq!(
            breaker.force_open_if(before),
            None,
            "{forced:?}: a stale generation forced it"
        );
        assert!(
            !breaker.reset_if(before),
            "{forced:?}: a stale generation reset it"
        );
        assert_eq!(
            breaker.state_and_generation(),
            now,
            "{forced:?}: changed by a stale generation"
        );
        // The current generation works.
        assert_eq!(breaker.force_open_if(now.1), Some(now.1.wrapping_add(1)));
        assert!(breaker.reset_if(now.1.wrapping_add(1)));
        assert_eq!(breaker.state(), State::Closed);
    }
}

/// `KeptForced`: "with no state-change event", and `state_and_generation`: "The generation is
/// one more on every transition ... (a `StateChange` carries the one it made)". A force made
/// with `force_open_if` is still its maker's to undo after a reload that kept it: the reshape
/// told no transition, so it made none.
#[test]
fn the_maker_of_a_force_can_undo_it_after_a_kept_forced_reshape() {
    let generations = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&generations);
    let breaker = count(10)
        .on_state_change(move |change| log.lock().unwrap().push(change.generation))
        .build()
        .unwrap();
    let (_, seen) = breaker.state_and_generation();
    let ours = breaker.force_open_if(seen).expect("nothing changed it");
    assert_eq!(
        breaker.reconfigure(count(30)).unwrap(),
        Reconfigured::KeptForced
    );
    let (state, now) = breaker.state_and_generation();
    assert_eq!(state, State::ForcedOpen);
    assert_eq!(
        *generations.lock().unwrap(),
        [ours],
        "only the force was told"
    );
    assert_eq!(
        now, ours,
        "the kept-forced reshape moved the generation without telling a transition"
    );
    assert!(
        breaker.reset_if(ours),
        "the force's maker can no longer undo it"
    );
    assert_eq!(breaker.state(), State::Closed);
}

// === 6. a listener that reenters ===========================================================

/// Listeners "Called on every state change, on the thread that caused it" — after the
/// transition (a `StateChange`'s listeners "run after the transition lock is released"). One
/// that forces the breaker open when a reshape resets it, then reshapes it again: nothing
/// deadlocks, the inner reshape keeps the force, and the force survives the outer call.
#[test]
fn a_listener_that_forces_and_reshapes_from_inside_a_reset() {
    without_hanging("reentrant listener", || {
        let cell: Arc<OnceLock<CircuitBreaker>> = Arc::new(OnceLock::new());
        let inner_how = Arc::new(Mutex::new(Vec::new()));
        let changes = Changes::default();
        let breaker = {
            let cell = Arc::clone(&cell);
            let inner_how = Arc::clone(&inner_how);
            let log = changes_of(&changes);
            count(10)
                .on_event(move |event| {
                    log(event);
                    let EventKind::StateChanged(change) = event.kind else {
                        return;
                    };
                    let b = cell.get().expect("set");
                    match (change.from, change.to) {
                        (State::Open, State::Closed) => b.force_open(),
                        (State::Closed, State::ForcedOpen) => {
                            let how = b.reconfigure(count(40)).unwrap();
                            inner_how.lock().unwrap().push((how, b.state()));
                        }
                        _ => {}
                    }
                })
                .build()
                .unwrap()
        };
        cell.set(breaker.clone()).ok().unwrap();
        breaker.try_acquire().unwrap().failure();
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), State::Open);
        take(&changes);

        assert_eq!(breaker.reconfigure(count(20)).unwrap(), Reconfigured::Reset);
        assert_eq!(
            *inner_how.lock().unwrap(),
            [(Reconfigured::KeptForced, State::ForcedOpen)]
        );
        assert_eq!(
            breaker.state(),
            State::ForcedOpen,
            "the listener's force was undone"
        );
        assert_eq!(breaker.policy().window(), Window::Count { calls: 40 });
        assert_eq!(take(&changes), ["open -> closed", "closed -> forced_open"]);
        assert!(breaker.try_acquire().is_err());
    });
}

// === 7. KeyedCircuitBreaker::reconfigure over every state ===================================

/// `KeyedCircuitBreaker::reconfigure`: "one of another shape is reset, with its state-change
/// event, unless it was forced open or closed by hand (it stays forced). Returns how many keys'
/// breakers were reset." A key in each state, one pinned by a handle: the forced ones are
/// neither reset, counted, nor told; a key made after takes the new policy.
#[test]
fn keyed_reshape_over_every_state() {
    let clock = FakeClock::new();
    let told: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
    let log = Arc::clone(&told);
    let table = count(10)
        .runtime(clock.clone())
        .keyed::<u32>()
        .max_keys(100)
        .on_state_change(move |key: &u32, change| {
            log.lock()
                .unwrap()
                .push((*key, format!("{} -> {}", change.from, change.to)))
        })
        .build()
        .unwrap();
    // Keys 0..5 in State::ALL's order; key 9 closed with a handle held.
    table.try_acquire(&0).unwrap().failure();
    for _ in 0..2 {
        table.try_acquire(&1).unwrap().failure();
        table.try_acquire(&2).unwrap().failure();
    }
    table.get_or_make(&3).unwrap().force_open();
    table.get_or_make(&4).unwrap().force_closed();
    table.try_acquire(&4).unwrap().failure();
    clock.advance(BREAK);
    let probe = table.try_acquire(&2).expect("a probe");
    assert!(probe.is_probe());
    let handle = table.get_or_make(&9).unwrap();
    for (key, state) in State::ALL.into_iter().enumerate() {
        assert_eq!(
            table.state(&u32::try_from(key).unwrap()),
            Some(state),
            "set up key {key}"
        );
    }
    told.lock().unwrap().clear();

    let reset = table.reconfigure(count(20)).unwrap();
    assert_eq!(table.state(&3), Some(State::ForcedOpen));
    assert_eq!(table.state(&4), Some(State::ForcedClosed));
    assert_eq!(table.counts(&3).unwrap().calls, 0);
    assert_eq!(
        table.counts(&4).unwrap().calls,
        0,
        "forced key's window not emptied"
    );
    for key in [0, 1, 2, 9] {
        assert_eq!(
            table.state(&key),
            Some(State::Closed),
            "key {key} not reset"
        );
    }
    assert_eq!(
        reset, 4,
        "keys 0, 1, 2 and 9 were reset, the forced 3 and 4 kept"
    );
    let told = std::mem::take(&mut *told.lock().unwrap());
    assert!(told.contains(&(1, "open -> closed".into())), "{told:?}");
    assert!(
        told.contains(&(2, "half_open -> closed".into())),
        "{told:?}"
    );
    assert!(
        !told.iter().any(|(key, _)| *key == 3 || *key == 4),
        "a forced key was told a state change: {told:?}"
    );
    probe.failure();
    assert_eq!(
        table.state(&2),
        Some(State::Closed),
        "a stale probe reopened it"
    );
    assert_eq!(handle.policy().window(), Window::Count { calls: 20 });
    assert_eq!(
        table.get_or_make(&77).unwrap().policy().window(),
        Window::Count { calls: 20 },
        "a key made after the reshape"
    );
    let mut not_closed = table.not_closed();
    not_closed.sort_by_key(|(key, _)| *key);
    assert_eq!(
        not_closed,
        [(3, State::ForcedOpen), (4, State::ForcedClosed)]
    );
}

// === 8. a keyed listener that reenters the table ===========================================

/// The keyed `on_state_change`: "Called on every state change of any key's breaker, with the
/// key, on the thread that caused it" (only `key_label` warns that calling the table from it
/// deadlocks). A listener told of a reshape's reset that forces another key open through
/// `get_or_make`, reads the table, and reconfigures it again with the same settings: no
/// deadlock, every key reset exactly once between the two calls, the key it forced stays forced, and that key — made during the reshape — follows
/// the new policy ("to keys made from now on").
#[test]
fn a_keyed_listener_that_forces_a_new_key_during_a_reshape() {
    without_hanging("reentrant keyed listener", || {
        let cell: Arc<OnceLock<KeyedCircuitBreaker<u32>>> = Arc::new(OnceLock::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let table = {
            let cell = Arc::clone(&cell);
            let seen = Arc::clone(&seen);
            count(10)
                .keyed::<u32>()
                .max_keys(50)
                .on_state_change(move |key: &u32, change| {
                    if *key == 1 && change.from == State::Open {
                        let table = cell.get().expect("set");
                        table.get_or_make(&500).unwrap().force_open();
                        let again = table.reconfigure(count(20)).unwrap();
                        seen.lock()
                            .unwrap()
                            .push((table.state(&1), table.state(&500), again));
                    }
                })
                .build()
                .unwrap()
        };
        cell.set(table.clone()).ok().unwrap();
        for key in 0..10u32 {
            table.try_acquire(&key).unwrap().failure();
        }
        table.try_acquire(&1).unwrap().failure();
        assert_eq!(table.state(&1), Some(State::Open));

        let reset = table.reconfigure(count(20)).unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].1, Some(State::ForcedOpen));
        // The inner call may reach the keys the outer one has not yet: between them, each of
        // the ten keys with a failure was reset once, the forced key 500 by neither.
        assert_eq!(reset + seen[0].2, 10, "outer {reset}, inner {}", seen[0].2);
        for key in 0..10u32 {
            assert_eq!(table.state(&key), Some(State::Closed), "key {key}");
            assert_eq!(table.counts(&key).unwrap().calls, 0, "key {key}");
            assert_eq!(
                table.get(&key).unwrap().policy().window(),
                Window::Count { calls: 20 },
                "key {key}"
            );
        }
        assert_eq!(
            table.state(&500),
            Some(State::ForcedOpen),
            "the listener's force was undone"
        );
        assert_eq!(
            table.get(&500).unwrap().policy().window(),
            Window::Count { calls: 20 },
            "a key made during the reshape kept the old policy"
        );
        assert!(table.try_acquire(&500).is_err());
    });
}

// === 9. get_or_make against churn ==========================================================

/// `get_or_make`: "While the handle is held, or the breaker is not closed, the key is never
/// evicted, so a key forced open stays open until it is forced closed or reset." And the
/// table holds "at most `max_keys` keys". Threads churn other keys (calls, handles, sweeps)
/// and reshapes on a table of 1 to 4 keys with no idle time while one forces a key through
/// `get_or_make`;
/// the forced key is checked while the churn goes on and after each round.
#[test]
fn a_key_forced_through_get_or_make_survives_churn() {
    const FORCED: u32 = 7;
    const ROUNDS: u64 = 40;
    for max_keys in 1..=4usize {
        let clock = FakeClock::new();
        // Churned keys never trip: only the force makes a key non-closed.
        let churn_policy = |calls: u32| {
            CircuitBreaker::builder()
                .no_failure_rate()
                .consecutive_failures(1_000_000)
                .window(Window::Count { calls })
        };
        let table = churn_policy(8)
            .runtime(clock.clone())
            .keyed::<u32>()
            .max_keys(max_keys)
            .idle_ttl(Duration::ZERO)
            .build()
            .unwrap();
        for round in 0..ROUNDS {
            let what = format!("max_keys {max_keys}, round {round}");
            let forced = if round % 2 == 0 {
                State::ForcedOpen
            } else {
                State::ForcedClosed
            };
            let is_forced = AtomicBool::new(false);
            let churning = AtomicUsize::new(2);
            std::thread::scope(|s| {
                for worker in 0..2u64 {
                    let (table, is_forced, churning, what) = (&table, &is_forced, &churning, &what);
                    s.spawn(move || {
                        let mut rng = XorShift::new(round * 31 + worker * 7 + max_keys as u64);
                        for _ in 0..400 {
                            let key = 100 + u32::try_from(rng.below(12)).unwrap();
                            match rng.below(6) {
                                0 | 1 => {
                                    if let Ok(permit) = table.try_acquire(&key) {
                                        match rng.below(3) {
                                            0 => permit.success(),
                                            1 => permit.failure(),
                                            _ => drop(permit),
                                        }
                                    }
                                }
                                2 => drop(table.get(&key)),
                                3 => {
                                    if let Ok(handle) = table.get_or_make(&key)
                                        && rng.below(4) == 0
                                    {
                                        handle.force_closed();
                                        handle.reset();
                                    }
                                }
                                4 => {
                                    // A sweep, or a reload reshaping every key.
                                    if rng.below(3) == 0 {
                                        let calls = 8 + u32::try_from(rng.below(3)).unwrap();
                                        table.reconfigure(churn_policy(calls)).unwrap();
                                    } else {
                                        table.retain_in_use();
                                    }
                                }
                                _ => {
                                    let not_closed = table.not_closed();
                                    assert!(not_closed.len() <= max_keys, "{what}: {not_closed:?}");
                                }
                            }
                            if is_forced.load(SeqCst) {
                                assert_eq!(
                                    table.state(&FORCED),
                                    Some(forced),
                                    "{what}: the forced key went during the churn"
                                );
                            }
                        }
                        churning.fetch_sub(1, SeqCst);
                    });
                }
                // The operator: forces the key in the middle of the churn.
                let handle = loop {
                    match table.get_or_make(&FORCED) {
                        Ok(handle) => break handle,
                        Err(Rejected::KeysFull { .. }) if churning.load(SeqCst) > 0 => {
                            std::thread::yield_now()
                        }
                        Err(e) => panic!("{what}: refused with no churn left: {e:?}"),
                    }
                };
                force(&handle, forced);
                is_forced.store(true, SeqCst);
                drop(handle);
                while churning.load(SeqCst) > 0 {
                    assert_eq!(table.state(&FORCED), Some(forced), "{what}");
                    std::thread::yield_now();
                }
            });
            assert_eq!(table.state(&FORCED), Some(forced), "{what}: evicted");
            assert!(table.not_closed().contains(&(FORCED, forced)), "{what}");
            table.retain_in_use();
            assert_eq!(table.state(&FORCED), Some(forced), "{what}: swept");
            let held = (100..112u32)
                .chain([FORCED])
                .filter(|key| table.state(key).is_some())
                .count();
            assert!(held <= max_keys, "{what}: {held} keys held");
            if max_keys == 1 {
                assert!(
                    matches!(table.try_acquire(&999), Err(Rejected::KeysFull { .. })),
                    "{what}: a new key took the forced key's only place"
                );
            }
            table.get(&FORCED).expect("held").reset();
            assert_eq!(table.state(&FORCED).unwrap_or(State::Closed), State::Closed);
        }
    }
}

// === 10. what pins a key ===================================================================

/// `get`/`get_or_make`: "While a handle is held the key is never evicted." A clone of a handle
/// is a handle (breakers are "Cheap to clone: clones share one state"). Once every handle is
/// dropped the closed key is an ordinary key again.
#[test]
fn a_held_handle_pins_a_closed_key_until_its_last_clone_is_dropped() {
    let (_clock, table) = keyed_on_a_clock(1, Duration::ZERO);
    assert!(table.get(&1).is_none(), "get makes nothing");
    assert_eq!(table.state(&1), None);
    let handle = table.get_or_make(&1).unwrap();
    assert_eq!(handle.state(), State::Closed, "made closed");
    let clone = handle.clone();
    drop(handle);
    for other in 2..50 {
        assert!(
            matches!(table.try_acquire(&other), Err(Rejected::KeysFull { .. })),
            "key {other} evicted a key whose handle is held"
        );
        assert!(table.get_or_make(&other).is_err());
        table.retain_in_use();
        assert_eq!(table.state(&1), Some(State::Closed));
    }
    clone.try_acquire().unwrap().failure();
    drop(clone);
    table.try_acquire(&2).unwrap().success();
    assert_eq!(
        table.state(&1),
        None,
        "an ordinary key once no handle is held"
    );
}

/// `Rejected::KeysFull::retry_after`: "The earliest the first of those keys may be forgotten
/// by time, if any time is known (`None` when every one of them waits on something other than
/// time, such as a permit)". A forced key waits on a reset, a key whose handle is held on the
/// handle: a `retry_after` they give must be kept, i.e. after it the new key gets a place.
#[test]
fn keys_full_retry_after_is_kept_with_forced_and_pinned_keys() {
    let ttl = Duration::from_secs(10);
    for pin in ["forced_open", "forced_closed", "handle"] {
        let (clock, table) = keyed_on_a_clock(2, ttl);
        let handle = table.get_or_make(&1).unwrap();
        match pin {
            "forced_open" => handle.force_open(),
            "forced_closed" => {
                handle.force_closed();
                table.try_acquire(&1).unwrap().failure();
            }
            _ => handle.try_acquire().unwrap().failure(),
        }
        let _held = (pin == "handle").then(|| handle.clone());
        drop(handle);
        // Key 2: closed with a failure, forgotten after `ttl`.
        table.try_acquire(&2).unwrap().failure();
        clock.advance(Duration::from_secs(3));
        let Err(Rejected::KeysFull { retry_after }) = table.try_acquire(&3) else {
            panic!("{pin}: a third key fit in a table of two");
        };
        let wait = retry_after.unwrap_or_else(|| panic!("{pin}: key 2 goes idle in time"));
        assert!(wait <= ttl, "{pin}: {wait:?}");
        clock.advance(wait);
        table
            .try_acquire(&3)
            .unwrap_or_else(|e| panic!("{pin}: refused after its retry_after {wait:?}: {e:?}"))
            .success();
        assert!(table.state(&1).is_some(), "{pin}: the pinned key went");
        assert_eq!(table.state(&2), None, "{pin}");

        // Now the pinned key and key 3 (a failure): after key 3 goes, any hint given must
        // still be kept, since the pinned key does not go by time.
        table.try_acquire(&3).unwrap().failure();
        clock.advance(ttl);
        table.try_acquire(&4).unwrap().success();
        let _ = table.try_acquire(&5).map(|p| p.failure());
        let _ = table.try_acquire(&6).map(drop);
        // Fill: 1 pinned, 5 with a failure.
        if let Err(Rejected::KeysFull {
            retry_after: Some(wait),
        }) = table.try_acquire(&8)
        {
            clock.advance(wait);
            assert!(
                table.try_acquire(&8).is_ok(),
                "{pin}: still refused after retry_after {wait:?}"
            );
        }
        assert!(table.state(&1).is_some(), "{pin}: the pinned key went");
    }
}

/// A table full of forced keys only: nothing goes by time, so nothing is promised by time.
#[test]
fn a_table_full_of_forced_keys_promises_no_time() {
    let (clock, table) = keyed_on_a_clock(2, Duration::from_secs(10));
    table.get_or_make(&1).unwrap().force_closed();
    // Failures recorded while forced closed: the key still goes by no time.
    for _ in 0..3 {
        table.try_acquire(&1).unwrap().failure();
    }
    table.get_or_make(&2).unwrap().force_open();
    assert_eq!(
        table.get_or_make(&3).unwrap_err(),
        Rejected::KeysFull { retry_after: None },
        "a time was promised that no forced key keeps"
    );
    clock.advance(HOUR);
    assert!(table.try_acquire(&3).is_err());
    assert_eq!(table.state(&1), Some(State::ForcedClosed));
    assert_eq!(table.state(&2), Some(State::ForcedOpen));
}

// === 11. the HTTP client ===================================================================

fn authority(host: &str) -> Authority {
    Authority::new("https", host, None).unwrap()
}

fn client_with(breaker: Option<CircuitBreakerBuilder>) -> ClientPoliciesBuilder {
    ClientPolicies::builder().no_retry().breaker(breaker)
}

/// `ClientPolicies::breakers`: "a host forced open stays so through a reconfiguration, until
/// it is reset ... a `reconfigure` that keeps the stage retunes this table in place".
/// `KeyedCircuitBreaker::reconfigure` counts only the keys it reset; `Retuned::breakers_reset`
/// names "Authorities whose breaker was reset". Hosts forced open and closed before their first
/// request, through changed thresholds, breaks and window shapes.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn client_reconfigures_never_return_a_forced_host_to_rotation() {
    let breaker = |window: Window, fails: u32, brk: u64| {
        CircuitBreaker::builder()
            .no_failure_rate()
            .consecutive_failures(fails)
            .window(window)
            .break_duration(Duration::from_secs(brk))
    };
    let client = client_with(Some(breaker(Window::Count { calls: 50 }, 1, 5)))
        .build()
        .unwrap();
    let table = client.breakers().unwrap();
    table
        .get_or_make(&authority("down.example"))
        .unwrap()
        .force_open();
    table
        .get_or_make(&authority("pinned.example"))
        .unwrap()
        .force_closed();
    let ten_secs = Window::Time {
        span: Duration::from_secs(10),
        buckets: 10,
    };
    let steps = [
        (breaker(Window::Count { calls: 50 }, 3, 5), false),
        (breaker(Window::Count { calls: 50 }, 3, 60), false),
        (breaker(ten_secs, 1, 1), true),
        (breaker(Window::Count { calls: 7 }, 1, 1), true),
        (
            breaker(Window::Count { calls: 7 }, 1, 1).half_open_probes(3),
            false,
        ),
    ];
    for (step, (settings, reshape)) in steps.into_iter().enumerate() {
        // An ordinary host, seen before the step.
        assert_eq!(
            request(&client, "https://up.example/", 200).await,
            (1, Ok(200))
        );
        let up_held = table.state(&authority("up.example")).is_some();
        let retuned = client.reconfigure(client_with(Some(settings))).unwrap();
        let expected = if reshape { usize::from(up_held) } else { 0 };
        assert_eq!(
            retuned.breakers_reset, expected,
            "step {step}: the forced hosts were counted as reset"
        );
        let now = client.breakers().unwrap();
        for (host, state) in [
            ("down.example", State::ForcedOpen),
            ("pinned.example", State::ForcedClosed),
        ] {
            assert_eq!(
                table.state(&authority(host)),
                Some(state),
                "step {step}: {host}"
            );
            assert_eq!(
                now.state(&authority(host)),
                Some(state),
                "step {step}: another table"
            );
        }
        let (sent, result) = request(&client, "https://down.example/x", 200).await;
        assert_eq!(
            sent, 0,
            "step {step}: the forced-open host was sent a request"
        );
        assert!(result.unwrap_err().contains("circuit"), "step {step}");
        // The forced-closed host fails and is still sent every request.
        for _ in 0..3 {
            assert_eq!(
                request(&client, "https://pinned.example/", 503).await,
                (1, Ok(503)),
                "step {step}: the forced-closed host was refused"
            );
        }
        tokio::time::sleep(HOUR).await;
    }
    table
        .get_or_make(&authority("down.example"))
        .unwrap()
        .reset();
    assert_eq!(
        request(&client, "https://down.example/x", 200).await,
        (1, Ok(200))
    );
}

/// `ClientPolicies::breakers`: "one that removes the stage (or removes and adds it again)
/// leaves the handle on a table no new request meets: ask again after a reconfiguration."
/// And `reconfigure`: "A stage the new settings add starts empty". So a force does not outlive
/// the stage: the documented price of removing it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn removing_the_breaker_stage_returns_a_forced_host_as_documented() {
    let client = client_with(Some(count(50))).build().unwrap();
    let old = client.breakers().unwrap();
    let down = authority("down.example");
    old.get_or_make(&down).unwrap().force_open();
    assert_eq!(request(&client, "https://down.example/", 200).await.0, 0);

    let retuned = client.reconfigure(client_with(None)).unwrap();
    assert_eq!(retuned.breakers_reset, 0);
    assert!(client.breakers().is_none(), "the stage is gone");
    assert_eq!(
        request(&client, "https://down.example/", 200).await,
        (1, Ok(200))
    );

    client.reconfigure(client_with(Some(count(50)))).unwrap();
    let new = client.breakers().unwrap();
    assert_eq!(new.state(&down), None, "a stage added again starts empty");
    assert_eq!(
        old.state(&down),
        Some(State::ForcedOpen),
        "the old table keeps its force"
    );
    assert_eq!(
        request(&client, "https://down.example/", 200).await,
        (1, Ok(200))
    );
    // The new table's force works as any.
    new.get_or_make(&down).unwrap().force_open();
    assert_eq!(request(&client, "https://down.example/", 200).await.0, 0);
}

// === 12. the registry's HTTP client ========================================================

/// `Reload::reset`: "A breaker forced open or closed by hand stays forced, and is not listed"
/// — an HTTP client's name is listed "when any of its hosts' breakers was" reset. Through
/// reloads of thresholds, breaks, window shapes and another section, strict and lenient: the
/// host forced open before its first request is never sent one, and a client whose only
/// host is forced is not listed as reset.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn registry_reloads_keep_a_host_forced_before_its_first_request() {
    for strict in [false, true] {
        let (registry, client, breakers, down) = down_before_its_first_request(strict);
        let files = [
            OUTBOUND.replace("consecutive_failures = 1", "consecutive_failures = 3"),
            OUTBOUND.replace(
                "window_calls = 50",
                "window_calls = 50\nbreak_duration = \"30s\"",
            ),
            OUTBOUND.replace("window_calls = 50", "window = \"10s\""),
            OUTBOUND.replace("window_calls = 50", "window = \"10s\"\nwindow_buckets = 5"),
            OUTBOUND.replace("window_calls = 50", "window_calls = 7"),
            format!("{OUTBOUND}[instances.outbound.retry]\nmax_attempts = 2\n"),
            OUTBOUND.to_string(),
        ];
        for (step, file) in files.iter().enumerate() {
            let what = format!("strict {strict}, step {step}");
            let reload = registry.reload(Config::from_toml(file).unwrap()).unwrap();
            assert!(
                reload.reset.is_empty(),
                "{what}: listed as reset with only a forced host held: {:?}",
                reload.reset
            );
            assert_eq!(breakers.state(&down), Some(State::ForcedOpen), "{what}");
            assert_eq!(
                client.breakers().unwrap().state(&down),
                Some(State::ForcedOpen),
                "{what}: the table was not kept"
            );
            let (sent, result) = request(&client, "https://down.example/", 200).await;
            assert_eq!(sent, 0, "{what}: the forced host was back in rotation");
            assert!(result.unwrap_err().contains("circuit"), "{what}");
            tokio::time::sleep(HOUR).await;
        }
        // A host seen: a reshape resets it, and the client is listed.
        assert_eq!(
            request(&client, "https://up.example/", 200).await,
            (1, Ok(200))
        );
        let reload = reload_window(&registry, "window_calls = 9");
        assert_eq!(reload.reset, ["outbound"], "strict {strict}");
        assert_eq!(breakers.state(&down), Some(State::ForcedOpen));
        assert_eq!(request(&client, "https://down.example/", 200).await.0, 0);
    }
}

/// `Registry::http_client`: "a section added or removed adds or removes the stage", and
/// `ClientPolicies::breakers`: a removed stage "leaves the handle on a table no new request
/// meets". A reload that drops `[breaker]` then one that brings it back: the force is gone
/// with the old table (documented), and the registry says so through the handle it gives.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reload_removing_the_breaker_section_drops_the_force_as_documented() {
    for strict in [false, true] {
        let (registry, client, old, down) = down_before_its_first_request(strict);

        let without = "[instances.outbound]\nhttp = {}\n";
        registry
            .reload(Config::from_toml(without).unwrap())
            .unwrap();
        assert!(
            client.breakers().is_none(),
            "strict {strict}: no section, no stage"
        );
        assert_eq!(
            request(&client, "https://down.example/", 200).await,
            (1, Ok(200))
        );

        registry
            .reload(Config::from_toml(OUTBOUND).unwrap())
            .unwrap();
        let new = client.breakers().expect("the stage is back");
        assert_eq!(new.state(&down), None, "strict {strict}: a new table");
        assert_eq!(old.state(&down), Some(State::ForcedOpen));
        assert_eq!(
            request(&client, "https://down.example/", 200).await,
            (1, Ok(200))
        );
    }
}

// === 13. Registry::breaker =================================================================

const PAYMENTS: &str = r#"
[instances.payments.breaker]
consecutive_failures = 1
window_calls = 50
[instances.other.breaker]
consecutive_failures = 1
"#;

/// `Reload::reset`: "A breaker forced open or closed by hand stays forced, and is not listed
/// ... They count in `retuned` too." And `LivePipeline`: "Its stages are the registry's
/// policies of the same name (so a breaker opened through the pipeline is open for
/// `Registry::breaker` too)". A registry breaker forced open, reloaded with other windows,
/// thresholds and breaks, strict or not: still forced, unlisted, and the pipeline refuses.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_registry_breaker_forced_by_hand_survives_reshaping_reloads() {
    for strict in [false, true] {
        for forced in [State::ForcedOpen, State::ForcedClosed] {
            let what = format!("strict {strict}, {forced:?}");
            let registry = Registry::builder(Config::from_toml(PAYMENTS).unwrap())
                .strict(strict)
                .build()
                .unwrap();
            let payments = registry.breaker("payments").unwrap();
            let pipeline = registry.pipeline("payments").unwrap();
            force(&payments, forced);
            let files = [
                PAYMENTS.replace("window_calls = 50", "window = \"10s\""),
                PAYMENTS.replace(
                    "window_calls = 50",
                    "window_calls = 3\nbreak_duration = \"1s\"",
                ),
                PAYMENTS.replace(
                    "consecutive_failures = 1\nwindow",
                    "failure_rate = 0.1\nwindow",
                ),
            ];
            for (step, file) in files.iter().enumerate() {
                let reload = registry.reload(Config::from_toml(file).unwrap()).unwrap();
                assert!(
                    !reload.reset.iter().any(|name| *name == "payments"),
                    "{what}, step {step}: listed as reset: {:?}",
                    reload.reset
                );
                assert!(reload.retuned >= 1, "{what}, step {step}");
                assert_eq!(payments.state(), forced, "{what}, step {step}");
                assert_eq!(registry.breaker("payments").unwrap().state(), forced);
                let mut ran = 0;
                let result = pipeline
                    .call(|| {
                        ran += 1;
                        async { Err::<(), _>("down") }
                    })
                    .await;
                if forced == State::ForcedOpen {
                    assert_eq!(ran, 0, "{what}, step {step}: the pipeline called through");
                    assert!(
                        matches!(result, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
                        "{what}, step {step}: {result:?}"
                    );
                } else {
                    assert!(ran >= 1, "{what}, step {step}");
                    assert_eq!(payments.state(), State::ForcedClosed, "{what}: tripped");
                }
                tokio::time::sleep(HOUR).await;
            }
        }
    }
}

/// `Registry::reload` (lenient): "those of instances it no longer declares are kept, on the
/// layers that remain (the defaults, say), and named in `Reload::removed`". The defaults'
/// window (100 calls) is another shape than the removed section's 50: the force stays.
#[test]
fn a_forced_breaker_of_a_removed_instance_stays_forced() {
    let registry = Registry::new(Config::from_toml(PAYMENTS).unwrap()).unwrap();
    let payments = registry.breaker("payments").unwrap();
    payments.force_open();
    let only_other = "[instances.other.breaker]\nconsecutive_failures = 1\n";
    let reload = registry
        .reload(Config::from_toml(only_other).unwrap())
        .unwrap();
    assert!(
        reload.removed.iter().any(|name| *name == "payments"),
        "{:?}",
        reload.removed
    );
    assert!(!reload.reset.iter().any(|name| *name == "payments"));
    assert_eq!(
        payments.state(),
        State::ForcedOpen,
        "the removal undid the force"
    );
    assert_ne!(
        payments.policy().window(),
        Window::Count { calls: 50 },
        "on the defaults"
    );
    // Declared again: still the same breaker, still forced.
    registry
        .reload(Config::from_toml(PAYMENTS).unwrap())
        .unwrap();
    assert_eq!(
        registry.breaker("payments").unwrap().state(),
        State::ForcedOpen
    );
}

/// `RegistryBuilder::on_event`: "A reload tells of the resets it causes on its own thread,
/// once the new configuration is in force; a listener may look the registry up then". A
/// listener told of breaker `a`'s reset forces breaker `b` open: the same reload reshapes `b`
/// too, but `b`'s new settings are in force before anyone is told, so the force stands.
#[test]
fn a_force_from_a_reload_listener_is_not_undone_by_the_same_reload() {
    without_hanging("registry listener", || {
        let cell: Arc<OnceLock<Registry>> = Arc::new(OnceLock::new());
        let forced_in_listener = Arc::new(AtomicUsize::new(0));
        let file = |calls: u32| {
            format!(
                "[defaults.breaker]\nwindow_calls = {calls}\nconsecutive_failures = 1\n\
                 [instances.a.breaker]\n[instances.b.breaker]\n"
            )
        };
        let registry = {
            let cell = Arc::clone(&cell);
            let count = Arc::clone(&forced_in_listener);
            Registry::builder(Config::from_toml(&file(10)).unwrap())
                .on_event(move |event| {
                    if let EventKind::StateChanged(change) = event.kind
                        && event.policy == "breaker"
                        && event.name == "a"
                        && change.to == State::Closed
                    {
                        let registry = cell.get().expect("set");
                        registry.breaker("b").unwrap().force_open();
                        count.fetch_add(1, SeqCst);
                    }
                })
                .build()
                .unwrap()
        };
        assert!(cell.set(registry).is_ok());
        let registry = cell.get().unwrap();
        let (a, b) = (
            registry.breaker("a").unwrap(),
            registry.breaker("b").unwrap(),
        );
        a.try_acquire().unwrap().failure();
        assert_eq!(a.state(), State::Open);
        let reload = registry
            .reload(Config::from_toml(&file(20)).unwrap())
            .unwrap();
        assert_eq!(forced_in_listener.load(SeqCst), 1);
        assert!(
            reload.reset.iter().any(|name| *name == "a"),
            "{:?}",
            reload.reset
        );
        assert_eq!(a.state(), State::Closed);
        assert_eq!(
            b.state(),
            State::ForcedOpen,
            "the reload reset `b` after its listener forced it"
        );
        assert_eq!(b.policy().window(), Window::Count { calls: 20 });
    });
}

/// `Registry::keyed_breaker`: "A reload retunes every key's breaker (see
/// `KeyedCircuitBreaker::reconfigure`)": a key forced before its first call stays forced
/// through a reshaping reload, and a table whose only keys are forced is not listed as reset.
#[test]
fn a_registry_keyed_table_keeps_a_key_forced_before_its_first_call() {
    let file = |calls: u32| {
        format!(
            "[instances.hosts.breaker]\nconsecutive_failures = 1\nwindow_calls = {calls}\n\
             [instances.hosts.keys]\nmax_keys = 2\nidle_ttl = \"0s\"\n"
        )
    };
    let registry = Registry::new(Config::from_toml(&file(10)).unwrap()).unwrap();
    let hosts = registry.keyed_breaker::<String>("hosts").unwrap();
    hosts.get_or_make(&"down".to_string()).unwrap().force_open();
    let reload = registry
        .reload(Config::from_toml(&file(20)).unwrap())
        .unwrap();
    assert!(
        !reload.reset.iter().any(|name| *name == "hosts"),
        "listed as reset with only a forced key: {:?}",
        reload.reset
    );
    assert_eq!(hosts.state(&"down".to_string()), Some(State::ForcedOpen));
    for n in 0..50 {
        hosts.try_acquire(&format!("churn{n}")).unwrap().success();
    }
    assert_eq!(
        hosts.state(&"down".to_string()),
        Some(State::ForcedOpen),
        "evicted"
    );
    let reload = registry
        .reload(Config::from_toml(&file(30)).unwrap())
        .unwrap();
    assert_eq!(hosts.state(&"down".to_string()), Some(State::ForcedOpen));
    let _ = reload;
}

// === 14. fronts ============================================================================

/// `BreakerLayer::wait_in_ready`: "While the breaker refuses, `poll_ready` waits: it sleeps
/// for the breaker's `retry_after` and asks again ... A wait longer than `max_wait` gives up
/// with the breaker's `Rejected::CircuitOpen`". A waiter on a forced-open breaker across a
/// kept-forced reshape and a kept reconfigure (a shorter break): never admitted, the inner
/// service never called.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_tower_waiter_on_a_forced_breaker_stays_refused_across_reshapes() {
    let breaker = count(10).build().unwrap();
    breaker.force_open();
    let inner_calls = Arc::new(AtomicUsize::new(0));
    let calls = Arc::clone(&inner_calls);
    let service = BreakerLayer::new(breaker.clone())
        .wait_in_ready(Some(Duration::from_secs(30)))
        .layer(tower::service_fn(move |(): ()| {
            calls.fetch_add(1, SeqCst);
            async { Ok::<_, Error<std::io::Error>>(()) }
        }));
    let waiter = tokio::spawn(async move { service.oneshot(()).await });
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        breaker
            .reconfigure(count(20).break_duration(Duration::from_secs(2)))
            .unwrap(),
        Reconfigured::KeptForced
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        breaker
            .reconfigure(count(20).consecutive_failures(5))
            .unwrap(),
        Reconfigured::Kept
    );
    let result = waiter.await.unwrap();
    assert!(
        matches!(result, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{result:?}"
    );
    assert_eq!(
        inner_calls.load(SeqCst),
        0,
        "a forced-open breaker let a call through"
    );
    assert_eq!(breaker.state(), State::ForcedOpen);
}

/// `wait_in_ready`: "holds the permit it gets until the call"; `KeptForced`: "Calls admitted
/// before are dropped from it". A permit taken in `poll_ready` while closed, the breaker then
/// forced and reshaped, the call failing after: nothing counted, nothing carried past a reset.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_tower_permit_held_across_a_kept_forced_reshape_counts_nothing() {
    for forced in [State::ForcedOpen, State::ForcedClosed] {
        let breaker = count(10).build().unwrap();
        let mut service = BreakerLayer::new(breaker.clone())
            .wait_in_ready(None)
            .layer(tower::service_fn(|(): ()| async {
                Err::<(), _>(Error::Inner(std::io::Error::other("down")))
            }));
        service.ready().await.unwrap();
        force(&breaker, forced);
        assert_eq!(
            breaker.reconfigure(count(20)).unwrap(),
            Reconfigured::KeptForced
        );
        let result = service.call(()).await;
        assert!(
            matches!(result, Err(Error::Inner(_))),
            "{forced:?}: {result:?}"
        );
        assert_eq!(breaker.counts().calls, 0, "{forced:?}: counted");
        assert_eq!(breaker.state(), forced);
        breaker.reset();
        breaker.try_acquire().unwrap().failure();
        assert_eq!(
            breaker.state(),
            State::Closed,
            "{forced:?}: a stale failure in the run"
        );
    }
}

/// A `Pipeline` over a forced-open breaker, reshaped: refused at once, the op never made.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pipeline_over_a_forced_breaker_refuses_after_a_reshape() {
    let breaker = count(10).build().unwrap();
    let pipeline = Pipeline::builder()
        .breaker(breaker.clone())
        .build()
        .unwrap();
    breaker.force_open();
    assert_eq!(
        breaker.reconfigure(time_window(60)).unwrap(),
        Reconfigured::KeptForced
    );
    tokio::time::sleep(HOUR).await;
    let mut ran = 0;
    let result = pipeline
        .call(|| {
            ran += 1;
            async { Ok::<_, &str>(()) }
        })
        .await;
    assert_eq!(ran, 0);
    assert!(matches!(
        result,
        Err(Error::Rejected(Rejected::CircuitOpen { .. }))
    ));
}

// === 15. races with the reconfiguration ====================================================

/// "a reload does not undo an operator": whichever of an operator's `force_open` and a
/// reshaping `reconfigure` lands first, the breaker ends forced open (forced first: kept
/// forced; reshaped first: reset, then forced). Raced from two threads, many times, from every
/// unforced state.
#[test]
fn a_force_racing_a_reshape_always_ends_forced() {
    let mut rng = XorShift::new(0xF0_4CED);
    for round in 0..600u32 {
        let clock = FakeClock::new();
        let breaker = count(10).runtime(clock.clone()).build().unwrap();
        let start = [State::Closed, State::Open, State::HalfOpen][round as usize % 3];
        let _probe = drive_to(&breaker, &clock, start);
        let forced = if rng.below(2) == 0 {
            State::ForcedOpen
        } else {
            State::ForcedClosed
        };
        let barrier = std::sync::Barrier::new(2);
        let how = std::thread::scope(|s| {
            let operator = s.spawn(|| {
                barrier.wait();
                force(&breaker, forced);
            });
            barrier.wait();
            let how = breaker.reconfigure(count(11 + round % 7)).unwrap();
            operator.join().unwrap();
            how
        });
        assert!(
            matches!(how, Reconfigured::Reset | Reconfigured::KeptForced),
            "round {round}: {how:?}"
        );
        assert_eq!(
            breaker.state(),
            forced,
            "round {round} from {start:?}: the reshape ({how:?}) undid the operator"
        );
        assert_eq!(
            breaker.policy().window(),
            Window::Count {
                calls: 11 + round % 7
            }
        );
    }
}

/// `KeyedCircuitBreaker::reconfigure` applies the policy "to every key's breaker in place, and
/// to keys made from now on". Keys made (and forced) on another thread while the table is
/// reshaped: once both are done, every key follows the last policy, and every forced key is
/// still forced.
#[test]
fn keys_made_during_a_keyed_reshape_follow_the_new_policy() {
    for round in 0..60u32 {
        let table = count(10).keyed::<u32>().max_keys(400).build().unwrap();
        for key in 0..40 {
            table.try_acquire(&key).unwrap().failure();
        }
        let calls = 20 + round % 5;
        std::thread::scope(|s| {
            let maker = s.spawn(|| {
                for key in 40..200u32 {
                    let handle = table.get_or_make(&key).unwrap();
                    if key % 3 == 0 {
                        handle.force_open();
                    }
                }
            });
            for step in 0..4 {
                table.reconfigure(count(calls - 3 + step)).unwrap();
            }
            maker.join().unwrap();
        });
        let last = Window::Count { calls };
        for key in 0..200u32 {
            let Some(handle) = table.get(&key) else {
                continue; // forgotten: a key made later starts on the policy in force
            };
            assert_eq!(
                handle.policy().window(),
                last,
                "round {round}: key {key} left on an old policy"
            );
            if key >= 40 && key % 3 == 0 {
                assert_eq!(
                    handle.state(),
                    State::ForcedOpen,
                    "round {round}: key {key}"
                );
            }
        }
        assert_eq!(table.policy().window(), last);
    }
}

/// The operator forces a host on one thread while another reloads the registry with window
/// shapes that alternate: the host ends forced open, in the table the client still uses.
#[test]
fn a_host_forced_while_the_registry_reloads_stays_forced() {
    for round in 0..20u32 {
        let registry = Registry::new(Config::from_toml(OUTBOUND).unwrap()).unwrap();
        let client = registry.http_client("outbound").unwrap();
        let down = authority("down.example");
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                client
                    .breakers()
                    .unwrap()
                    .get_or_make(&down)
                    .unwrap()
                    .force_open();
            });
            barrier.wait();
            for step in 0..20u32 {
                let file = if step % 2 == 0 {
                    OUTBOUND.replace("window_calls = 50", "window = \"10s\"")
                } else {
                    OUTBOUND.replace("window_calls = 50", &format!("window_calls = {}", 5 + step))
                };
                registry.reload(Config::from_toml(&file).unwrap()).unwrap();
            }
        });
        assert_eq!(
            client.breakers().unwrap().state(&down),
            Some(State::ForcedOpen),
            "round {round}: a reload put the host back"
        );
    }
}

/// `reconfigure`: "on an error nothing changes". A forced breaker with calls in its window
/// given settings `build` refuses: still forced, its window still holding them.
#[test]
fn a_refused_reconfigure_leaves_a_forced_breaker_alone() {
    for forced in [State::ForcedOpen, State::ForcedClosed] {
        let breaker = count(10).build().unwrap();
        let keyed = count(10).keyed::<u8>().max_keys(4).build().unwrap();
        let key_handle = keyed.get_or_make(&1).unwrap();
        for b in [&breaker, &key_handle] {
            match forced {
                State::ForcedOpen => b.force_open(),
                _ => {
                    b.force_closed();
                    b.try_acquire().unwrap().failure();
                }
            }
        }
        let before = (breaker.counts(), key_handle.counts());
        let bad = || count(20).failure_rate(2.0);
        assert!(
            breaker.reconfigure(bad()).is_err(),
            "{forced:?}: a rate of 2 accepted"
        );
        assert!(keyed.reconfigure(bad()).is_err());
        assert_eq!(breaker.state(), forced);
        assert_eq!(keyed.state(&1), Some(forced));
        assert_eq!(
            (breaker.counts(), key_handle.counts()),
            before,
            "{forced:?}"
        );
        assert_eq!(breaker.policy().window(), Window::Count { calls: 10 });
        assert_eq!(keyed.policy().window(), Window::Count { calls: 10 });
    }
}
