#![cfg(feature = "toml")]
//! Hostile tests of live reconfiguration, from the rustdoc alone: `Registry::reload` and each policy's `reconfigure` with calls, permits, probes and waiters in flight, in virtual time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use tidewall::breaker::{CircuitBreaker, CircuitBreakerBuilder, Reconfigured, State, Window};
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::bulkhead::{Bulkhead, OwnedPermit};
use tidewall::config::{Config, Problem, Registry};
use tidewall::pipeline::Pipeline;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Tokio};
use tidewall::testing::FakeClock;
use tidewall::{Deadline, Error, Rejected};
use tidewall_core::rng::SplitMix64;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const YEAR: Duration = Duration::from_secs(365 * 86_400);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("must be accepted: {e}\n---\n{text}"))
}

fn on(clock: &FakeClock, config: Config) -> Registry<FakeClock> {
    Registry::builder(config)
        .runtime(clock.clone())
        .build()
        .unwrap_or_else(|e| panic!("registry refused: {e}"))
}

/// Seeded draws from the library's own generator: every run draws the same numbers.
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        let max = u64::try_from(n - 1).unwrap();
        usize::try_from(self.0.below_or_equal(max)).unwrap()
    }
}

fn bulkhead_text(name: &str, max: usize, queue: usize) -> String {
    format!(
        "[instances.{name}.bulkhead]\nmax_concurrent = {max}\nmax_queue = {queue}\nmax_wait = \"off\"\n"
    )
}

type Granted = Arc<Mutex<Vec<(usize, OwnedPermit<Tokio>)>>>;

type Events = Arc<Mutex<Vec<(State, State)>>>;

fn listened(builder: CircuitBreakerBuilder<FakeClock>) -> (CircuitBreaker<FakeClock>, Events) {
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    let breaker = builder
        .on_state_change(move |change| sink.lock().unwrap().push((change.from, change.to)))
        .build()
        .unwrap();
    (breaker, events)
}

fn events_of(events: &Events) -> Vec<(State, State)> {
    events.lock().unwrap().clone()
}

fn is_open_rejection<T>(result: Result<T, Rejected>) -> bool {
    matches!(result, Err(Rejected::CircuitOpen { .. }))
}

async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Bulkheads
// ---------------------------------------------------------------------------------------------

/// Contract: no permit is revoked; shrinking below what is held admits nobody new until
/// enough come back; `in_flight` counts exactly the permits held; capacity is conserved.
#[test]
fn bulkhead_permits_held_across_random_grow_shrink_reloads_are_conserved() {
    let clock = FakeClock::new();
    let registry = on(&clock, config(&bulkhead_text("a", 4, 0)));
    let bulkhead = registry.bulkhead("a").unwrap();
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    let mut held: Vec<OwnedPermit<FakeClock>> = Vec::new();
    let mut cap = 4usize;
    for step in 0..5000 {
        match rng.below(5) {
            0 => {
                cap = 1 + rng.below(8);
                let reload = registry
                    .reload(config(&bulkhead_text("a", cap, 0)))
                    .unwrap();
                assert_eq!(reload.built, 0, "step {step}");
            }
            1 | 2 => match bulkhead.try_acquire_owned() {
                Ok(permit) => {
                    assert!(
                        held.len() < cap,
                        "step {step}: admitted with {} held under a limit of {cap}",
                        held.len()
                    );
                    held.push(permit);
                }
                Err(e) => {
                    assert_eq!(e, Rejected::BulkheadFull, "step {step}");
                    assert!(
                        held.len() >= cap,
                        "step {step}: refused with {} held under a limit of {cap}",
                        held.len()
                    );
                }
            },
            _ => {
                if !held.is_empty() {
                    let i = rng.below(held.len());
                    drop(held.swap_remove(i));
                }
            }
        }
        assert_eq!(bulkhead.capacity(), cap, "step {step}");
        assert_eq!(
            bulkhead.in_flight(),
            held.len(),
            "step {step}: in_flight counts every permit held"
        );
        assert_eq!(
            bulkhead.available(),
            cap.saturating_sub(held.len()),
            "step {step}: free slots with {} held under {cap}",
            held.len()
        );
    }
    held.clear();
    assert_eq!(
        bulkhead.available(),
        bulkhead.capacity(),
        "capacity conserved"
    );
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
}

/// Contract: waiters keep their place across reloads, growing hands new permits to them
/// first (FIFO), a waiter cancelled while queued (even at the instant a permit is granted to
/// it) leaks nothing, nobody waits while a slot is free, and `in_flight` never grows past the
/// capacity.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn bulkhead_waiters_cancelled_and_granted_across_reloads_leak_nothing() {
    let registry = Registry::new(config(&bulkhead_text("w", 2, 1000))).unwrap();
    let bulkhead = registry.bulkhead("w").unwrap();
    let granted: Granted = Arc::default();
    let mut waiting: BTreeMap<usize, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut granted_ever: BTreeSet<usize> = BTreeSet::new();
    let mut rng = Rng::new(0xDEAD_BEEF_1234_5678);
    let mut cap = 2usize;
    let mut next_id = 0usize;
    let mut prev_in_flight = 0usize;

    for step in 0..3000 {
        match rng.below(6) {
            0 | 1 => {
                let id = next_id;
                next_id += 1;
                let (b, g) = (bulkhead.clone(), Arc::clone(&granted));
                waiting.insert(
                    id,
                    tokio::spawn(async move {
                        let permit = b
                            .acquire_owned(Deadline::none())
                            .await
                            .expect("no wait limit, no deadline");
                        g.lock().unwrap().push((id, permit));
                    }),
                );
            }
            2 => {
                let mut g = granted.lock().unwrap();
                if !g.is_empty() {
                    let i = rng.below(g.len());
                    drop(g.swap_remove(i));
                }
            }
            3 => {
                if !waiting.is_empty() {
                    let k = *waiting.keys().nth(rng.below(waiting.len())).unwrap();
                    waiting[&k].abort();
                }
            }
            4 => {
                // Release a permit and cancel the oldest waiter at once: the permit may have
                // been granted to it at that instant, and must be passed on.
                let released = {
                    let mut g = granted.lock().unwrap();
                    if g.is_empty() {
                        None
                    } else {
                        let i = rng.below(g.len());
                        Some(g.swap_remove(i))
                    }
                };
                drop(released);
                if let Some((_, h)) = waiting.iter().next() {
                    h.abort();
                }
            }
            _ => {
                cap = 1 + rng.below(6);
                registry
                    .reload(config(&bulkhead_text("w", cap, 1000)))
                    .unwrap();
            }
        }
        settle().await;
        waiting.retain(|_, h| !h.is_finished());
        let g = granted.lock().unwrap();
        for (id, _) in g.iter() {
            granted_ever.insert(*id);
        }
        let held = g.len();
        drop(g);
        let in_flight = bulkhead.in_flight();
        assert_eq!(
            in_flight, held,
            "step {step}: in_flight counts the permits held"
        );
        assert_eq!(
            bulkhead.queued(),
            waiting.len(),
            "step {step}: queued counts the waiters"
        );
        assert!(
            in_flight <= cap.max(prev_in_flight),
            "step {step}: in_flight grew to {in_flight} past the capacity {cap} (was {prev_in_flight})"
        );
        if !waiting.is_empty() {
            assert!(
                in_flight >= cap,
                "step {step}: {} waiting while {in_flight} of {cap} slots are taken",
                waiting.len()
            );
        }
        if let (Some(oldest_waiting), Some(newest_granted)) =
            (waiting.keys().next(), granted_ever.iter().next_back())
        {
            assert!(
                oldest_waiting > newest_granted,
                "step {step}: waiter {oldest_waiting} is still queued after {newest_granted} (FIFO)"
            );
        }
        prev_in_flight = in_flight;
    }
    // Grow enough for every waiter, then give everything back.
    registry
        .reload(config(&bulkhead_text("w", 4096, 1000)))
        .unwrap();
    settle().await;
    waiting.retain(|_, h| !h.is_finished());
    assert!(waiting.is_empty(), "growing served every waiter");
    granted.lock().unwrap().clear();
    assert_eq!(
        bulkhead.available(),
        bulkhead.capacity(),
        "capacity conserved"
    );
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
}

/// Contract: callers already queued stay queued when the queue shrinks (newcomers are then
/// refused), and growing hands the new permits to queued callers first.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn bulkhead_queue_shrunk_below_its_waiters_keeps_them_in_order() {
    let bulkhead = Bulkhead::builder(1)
        .max_queue(8)
        .max_wait(None)
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let order: Arc<Mutex<Vec<usize>>> = Arc::default();
    let mut tasks = Vec::new();
    for id in 0..4 {
        let (b, order) = (bulkhead.clone(), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let permit = b.acquire_owned(Deadline::none()).await.unwrap();
            order.lock().unwrap().push(id);
            permit
        }));
        settle().await;
    }
    assert_eq!(bulkhead.queued(), 4);
    bulkhead
        .reconfigure(Bulkhead::builder(1).max_queue(1).max_wait(None))
        .unwrap();
    assert_eq!(bulkhead.queued(), 4, "queued callers stay queued");
    let newcomer = tokio::time::timeout(secs(1), bulkhead.acquire()).await;
    assert!(
        matches!(newcomer, Ok(Err(Rejected::BulkheadFull))),
        "the shrunk queue is full: {newcomer:?}"
    );
    // Grow by two: the two oldest waiters get the permits, before any newcomer.
    bulkhead
        .reconfigure(Bulkhead::builder(3).max_queue(1).max_wait(None))
        .unwrap();
    assert!(bulkhead.try_acquire().is_err(), "waiters are served first");
    settle().await;
    assert_eq!(*order.lock().unwrap(), [0, 1]);
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (3, 2));
    drop(held);
    settle().await;
    assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
    let mut permits = Vec::new();
    for task in tasks.drain(..3) {
        permits.push(task.await.unwrap());
    }
    permits.clear();
    settle().await;
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3]);
    drop(tasks.pop().unwrap().await.unwrap());
    assert_eq!(bulkhead.available(), bulkhead.capacity());
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
}

// ---------------------------------------------------------------------------------------------
// Circuit breakers
// ---------------------------------------------------------------------------------------------

fn consecutive(clock: &FakeClock, brk: Duration, probes: u32) -> CircuitBreakerBuilder<FakeClock> {
    CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .no_failure_rate()
        .window(Window::Count { calls: 10 })
        .break_duration(brk)
        .half_open_probes(probes)
        .max_half_open_wait(None)
}

/// Contract: a same-shape reconfigure keeps an open breaker open until its break ends (the
/// break it started with, whether the new one is shorter or longer), emits no event, and the
/// next break follows the new schedule.
#[test]
fn an_open_breaker_keeps_its_break_when_break_duration_changes() {
    let clock = FakeClock::new();
    let (breaker, events) = listened(consecutive(&clock, secs(10), 1));
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    clock.advance(secs(3));
    let how = breaker
        .reconfigure(consecutive(&clock, secs(1), 1))
        .unwrap();
    assert_eq!(how, Reconfigured::Kept);
    assert!(
        is_open_rejection(breaker.try_acquire()),
        "a shorter break does not end this one"
    );
    clock.advance(ms(6_999));
    assert!(
        is_open_rejection(breaker.try_acquire()),
        "9.999 s into a 10 s break"
    );
    let how = breaker
        .reconfigure(consecutive(&clock, Duration::from_secs(3600), 1))
        .unwrap();
    assert_eq!(how, Reconfigured::Kept);
    assert_eq!(
        events_of(&events),
        [(State::Closed, State::Open)],
        "Kept emits nothing"
    );
    clock.advance(ms(1));
    let probe = breaker
        .try_acquire()
        .expect("the 10 s break ended, whatever the new one");
    assert!(probe.is_probe());
    probe.failure();
    assert_eq!(breaker.state(), State::Open);
    clock.advance(secs(3599));
    assert!(
        is_open_rejection(breaker.try_acquire()),
        "the next break is the new hour"
    );
    clock.advance(secs(1));
    assert!(breaker.try_acquire().unwrap().is_probe());
}

/// Contract: probes out across a same-shape reconfigure keep their slots; fewer probes admit
/// nobody until enough slots come back, more probes admit exactly the difference; a probe's
/// failure reopens and the other probes' outcomes are then ignored.
#[test]
fn half_open_probes_in_flight_across_probe_count_changes() {
    let clock = FakeClock::new();
    let (breaker, _events) = listened(consecutive(&clock, secs(5), 3));
    breaker.try_acquire().unwrap().failure();
    clock.advance(secs(5));
    let mut probes: Vec<_> = (0..3)
        .map(|_| breaker.try_acquire_owned().unwrap())
        .collect();
    assert!(probes.iter().all(|p| p.is_probe()));
    assert!(is_open_rejection(breaker.try_acquire()), "every slot taken");

    // Shrink to one probe with three out.
    let how = breaker
        .reconfigure(consecutive(&clock, secs(5), 1))
        .unwrap();
    assert_eq!(
        (how, breaker.state()),
        (Reconfigured::Kept, State::HalfOpen)
    );
    assert!(is_open_rejection(breaker.try_acquire()), "3 out, 1 allowed");
    drop(probes.pop());
    drop(probes.pop());
    assert!(
        is_open_rejection(breaker.try_acquire()),
        "still 1 out, 1 allowed"
    );
    drop(probes.pop());
    let probe = breaker.try_acquire().expect("the last slot came back");
    assert!(
        is_open_rejection(breaker.try_acquire()),
        "exactly one probe"
    );
    probe.success();
    assert_eq!(
        breaker.state(),
        State::Closed,
        "one success closes a one-probe breaker"
    );

    // Grow from one probe out to three: exactly two more.
    breaker.try_acquire().unwrap().failure();
    clock.advance(secs(5));
    let first = breaker.try_acquire_owned().unwrap();
    assert!(is_open_rejection(breaker.try_acquire()));
    assert_eq!(
        breaker
            .reconfigure(consecutive(&clock, secs(5), 3))
            .unwrap(),
        Reconfigured::Kept
    );
    let more: Vec<_> = (0..10)
        .filter_map(|_| breaker.try_acquire_owned().ok())
        .collect();
    assert_eq!(more.len(), 2, "three probes in all");
    first.success();
    more.into_iter().for_each(|p| p.success());
    assert_eq!(breaker.state(), State::Closed);

    // A failure with probes out after a reconfigure reopens, with the new break.
    breaker.try_acquire().unwrap().failure();
    clock.advance(secs(5));
    let a = breaker.try_acquire_owned().unwrap();
    let b = breaker.try_acquire_owned().unwrap();
    assert_eq!(
        breaker
            .reconfigure(consecutive(&clock, secs(1), 3))
            .unwrap(),
        Reconfigured::Kept
    );
    a.failure();
    assert_eq!(breaker.state(), State::Open);
    b.success();
    assert_eq!(
        breaker.state(),
        State::Open,
        "an outcome from the half-open state is ignored"
    );
    clock.advance(ms(999));
    assert!(is_open_rejection(breaker.try_acquire()));
    clock.advance(ms(1));
    assert!(breaker.try_acquire().is_ok(), "the new 1 s break");
}

fn rated(clock: &FakeClock, window: Window, rate: f64) -> CircuitBreakerBuilder<FakeClock> {
    CircuitBreaker::builder()
        .runtime(clock.clone())
        .failure_rate(rate)
        .minimum_calls(2)
        .window(window)
        .break_duration(secs(10))
}

/// Contract: another window shape resets to closed with exactly one state-change event,
/// outcomes of permits taken before the reset are ignored, a same shape keeps permits counting,
/// and forced states survive any reconfigure (another shape too), but not a reset by hand.
#[test]
fn a_shape_change_resets_once_and_ignores_permits_from_before() {
    let clock = FakeClock::new();
    let count10 = Window::Count { calls: 10 };
    let time10 = Window::Time {
        span: secs(10),
        buckets: 10,
    };
    let (breaker, events) = listened(rated(&clock, count10, 0.5));

    // A permit across a same-shape reconfigure still counts.
    let kept = breaker.try_acquire_owned().unwrap();
    assert_eq!(
        breaker.reconfigure(rated(&clock, count10, 0.9)).unwrap(),
        Reconfigured::Kept
    );
    kept.success();
    assert_eq!(breaker.counts().calls, 1, "the permit's outcome counted");
    breaker.reset();
    events.lock().unwrap().clear();

    let old: Vec<_> = (0..3)
        .map(|_| breaker.try_acquire_owned().unwrap())
        .collect();
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        breaker.reconfigure(rated(&clock, time10, 0.5)).unwrap(),
        Reconfigured::Reset
    );
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.counts().calls, 0);
    assert_eq!(
        events_of(&events),
        [(State::Closed, State::Open), (State::Open, State::Closed)],
        "one event for the reset"
    );
    old.into_iter().for_each(|p| p.failure());
    assert_eq!(
        (breaker.state(), breaker.counts().calls),
        (State::Closed, 0),
        "outcomes from before the reset are ignored"
    );
    assert_eq!(breaker.policy().window(), time10);

    // Same span, other buckets: another shape.
    assert_eq!(
        breaker
            .reconfigure(rated(
                &clock,
                Window::Time {
                    span: secs(10),
                    buckets: 5
                },
                0.5
            ))
            .unwrap(),
        Reconfigured::Reset
    );

    // Forced open survives a same-shape reconfigure, even a century on.
    breaker.force_open();
    let before = events_of(&events).len();
    let five = Window::Time {
        span: secs(10),
        buckets: 5,
    };
    assert_eq!(
        breaker.reconfigure(rated(&clock, five, 0.2)).unwrap(),
        Reconfigured::Kept
    );
    clock.advance(YEAR * 100);
    assert_eq!(breaker.state(), State::ForcedOpen);
    assert!(is_open_rejection(breaker.try_acquire()));
    assert_eq!(events_of(&events).len(), before, "Kept emits nothing");
    // Another shape keeps it forced too, with no event: a reload does not undo an operator.
    assert_eq!(
        breaker.reconfigure(rated(&clock, count10, 0.2)).unwrap(),
        Reconfigured::KeptForced
    );
    assert_eq!(breaker.state(), State::ForcedOpen);
    assert_eq!(events_of(&events).len(), before, "KeptForced emits nothing");
    assert_eq!(breaker.policy().window(), count10);
    breaker.reset();
    assert_eq!(
        events_of(&events).last(),
        Some(&(State::ForcedOpen, State::Closed))
    );

    // Forced closed survives a same-shape reconfigure and keeps not tripping.
    breaker.force_closed();
    assert_eq!(
        breaker.reconfigure(rated(&clock, count10, 0.1)).unwrap(),
        Reconfigured::Kept
    );
    for _ in 0..20 {
        breaker.try_acquire().unwrap().failure();
    }
    assert_eq!(breaker.state(), State::ForcedClosed);
}

/// Contract: a same-shape reconfigure keeps the run of consecutive failures; a lowered
/// threshold judges it at once.
#[test]
fn the_run_of_failures_survives_a_same_shape_reconfigure() {
    let clock = FakeClock::new();
    let settings = |n: u32| {
        CircuitBreaker::builder()
            .runtime(clock.clone())
            .no_failure_rate()
            .consecutive_failures(n)
            .window(Window::Count { calls: 50 })
    };
    let breaker = settings(3).build().unwrap();
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(
        breaker.reconfigure(settings(3)).unwrap(),
        Reconfigured::Kept
    );
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Open, "2 + 1 failures in a row");
    breaker.reset();
    for _ in 0..4 {
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), State::Closed);
        breaker.reset();
    }
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().failure();
    assert_eq!(
        breaker.reconfigure(settings(2)).unwrap(),
        Reconfigured::Kept
    );
    assert_eq!(
        breaker.state(),
        State::Open,
        "a run of 2 under a threshold of 2, judged at the reconfigure"
    );
}

/// Contract ("any age"): stale buckets never count again, across a reconfigure made after a
/// year of idleness; a break that ended long ago is over after a same-shape reconfigure.
#[test]
fn idle_years_around_a_reconfigure_count_no_stale_calls() {
    let clock = FakeClock::new();
    let window = Window::Time {
        span: secs(10),
        buckets: 10,
    };
    let settings = |rate: f64| {
        CircuitBreaker::builder()
            .runtime(clock.clone())
            .failure_rate(rate)
            .minimum_calls(4)
            .window(window)
            .break_duration(secs(5))
    };
    let breaker = settings(0.5).build().unwrap();
    for _ in 0..3 {
        breaker.try_acquire().unwrap().failure();
    }
    clock.advance(YEAR);
    assert_eq!(
        breaker.reconfigure(settings(0.4)).unwrap(),
        Reconfigured::Kept
    );
    breaker.try_acquire().unwrap().failure();
    for _ in 0..3 {
        breaker.try_acquire().unwrap().success();
    }
    assert_eq!(
        breaker.state(),
        State::Closed,
        "1 of 4 failed; the 3 from a year ago are gone"
    );
    assert_eq!(breaker.counts().calls, 4);
    let mut n = 0;
    while breaker.state() == State::Closed && n < 20 {
        breaker.try_acquire().unwrap().failure();
        n += 1;
    }
    assert_eq!(breaker.state(), State::Open);
    clock.advance(YEAR * 100);
    assert_eq!(
        breaker.reconfigure(settings(0.5)).unwrap(),
        Reconfigured::Kept
    );
    let probe = breaker
        .try_acquire()
        .expect("the break ended a century ago");
    assert!(probe.is_probe());
    probe.success();
    assert_eq!(breaker.state(), State::Closed);
    clock.advance(secs(30));
    for _ in 0..3 {
        breaker.try_acquire().unwrap().success();
    }
    breaker.try_acquire().unwrap().failure();
    assert_eq!(breaker.state(), State::Closed, "1 of 4");
}

/// Contract (registry): a reload names exactly the breakers whose window changed shape;
/// half-open probes out across it keep working for a kept breaker and are ignored for a reset
/// one.
#[test]
fn a_reload_with_probes_out_resets_only_the_reshaped_breakers() {
    let text = |a_calls: u32, b_rate: f64| {
        format!(
            "[defaults.breaker]\nconsecutive_failures = 1\nbreak_duration = \"5s\"\nhalf_open_probes = 2\n\
             [instances.a.breaker]\nwindow_calls = {a_calls}\n\
             [instances.b.breaker]\nfailure_rate = {b_rate}\nwindow_calls = 10\n"
        )
    };
    let clock = FakeClock::new();
    let registry = on(&clock, config(&text(10, 0.5)));
    let (a, b) = (
        registry.breaker("a").unwrap(),
        registry.breaker("b").unwrap(),
    );
    let other = registry.breaker("c").unwrap();
    for breaker in [&a, &b, &other] {
        breaker.try_acquire().unwrap().failure();
    }
    clock.advance(secs(5));
    let a_probes: Vec<_> = (0..2).map(|_| a.try_acquire_owned().unwrap()).collect();
    let b_probes: Vec<_> = (0..2).map(|_| b.try_acquire_owned().unwrap()).collect();
    let reload = registry.reload(config(&text(20, 0.7))).unwrap();
    assert_eq!(reload.reset, ["a"]);
    assert_eq!(
        (a.state(), b.state(), other.state()),
        (State::Closed, State::HalfOpen, State::Open)
    );
    a_probes.into_iter().for_each(|p| p.failure());
    assert_eq!(
        a.state(),
        State::Closed,
        "probes from before the reset are ignored"
    );
    b_probes.into_iter().for_each(|p| p.success());
    assert_eq!(b.state(), State::Closed, "the kept probes close b");
    assert!(other.try_acquire().is_ok(), "c's break ended as before");
}

// ---------------------------------------------------------------------------------------------
// Rate limiters
// ---------------------------------------------------------------------------------------------

/// Rates whose emission interval is a whole number of nanoseconds.
const EXACT_COUNTS: [u32; 16] = [
    1, 2, 4, 5, 8, 10, 20, 25, 40, 50, 100, 125, 200, 250, 500, 1000,
];

fn limit(
    clock: &FakeClock,
    count: u32,
    period: Duration,
    burst: u32,
) -> tidewall::rate::RateLimiterBuilder<FakeClock> {
    RateLimiter::builder(count, period)
        .burst(burst)
        .jitter(Duration::ZERO)
        .runtime(clock.clone())
}

/// Contract: the cells admitted stay that many cells under the new limit, so no decision ever
/// admits more than a model of outstanding cells allows (nor refuses what it allows), and
/// `retry_after` is exact, under thousands of random reloads mid-traffic.
#[test]
fn random_rate_reloads_mid_traffic_follow_a_model_of_outstanding_cells() {
    let clock = FakeClock::new();
    let mut rng = Rng::new(0x0123_4567_89AB_CDEF);
    let (mut count, mut burst) = (10u32, 10u32);
    let limiter = limit(&clock, count, secs(1), burst).build().unwrap();
    let mut interval = 1e9 / f64::from(count);
    let mut outstanding = 0.0f64; // cells not yet paid off
    let mut last = clock.elapsed();
    let (mut admitted, mut reloads, mut checked) = (0u64, 0u64, 0u64);
    const EPS: f64 = 0.02;
    for step in 0..40_000 {
        if rng.below(8) == 0 {
            count = EXACT_COUNTS[rng.below(EXACT_COUNTS.len())];
            burst = 1 + u32::try_from(rng.below(40)).unwrap();
            limiter
                .reconfigure(limit(&clock, count, secs(1), burst))
                .unwrap();
            interval = 1e9 / f64::from(count);
            reloads += 1;
        }
        let step_ns = rng.next() % (3 * (1_000_000_000 / u64::from(count)));
        clock.advance(Duration::from_nanos(step_ns));
        let now = clock.elapsed();
        outstanding = (outstanding - (now - last).as_secs_f64() * 1e9 / interval).max(0.0);
        last = now;
        for _ in 0..rng.below(4) {
            let boundary = f64::from(burst) - 1.0;
            let result = limiter.check();
            checked += 1;
            match result {
                Ok(()) => {
                    assert!(
                        outstanding <= boundary + EPS,
                        "step {step}: admitted with {outstanding:.4} cells outstanding under {count}/s burst {burst}"
                    );
                    outstanding += 1.0;
                    admitted += 1;
                }
                Err(Rejected::RateLimited { retry_after }) => {
                    assert!(
                        outstanding >= boundary - EPS,
                        "step {step}: refused with {outstanding:.4} cells outstanding under {count}/s burst {burst}"
                    );
                    let expected = (outstanding - boundary).max(0.0) * interval;
                    let got = retry_after.as_secs_f64() * 1e9;
                    assert!(
                        (got - expected).abs() <= EPS * interval + 2.0,
                        "step {step}: retry_after {got} ns, expected {expected:.0} ns"
                    );
                }
                Err(other) => panic!("step {step}: {other:?}"),
            }
        }
    }
    assert!(
        reloads > 1000 && admitted > 1000 && checked > admitted,
        "{reloads} {admitted} {checked}"
    );
}

/// Contract: a burst just spent is never readmitted, however many reloads come between, and
/// after them the debt is exactly the cells spent.
#[test]
fn a_thousand_reloads_at_one_instant_keep_the_spent_burst_spent() {
    let clock = FakeClock::new();
    let limiter = limit(&clock, 10, secs(1), 10).build().unwrap();
    assert_eq!((0..20).filter(|_| limiter.check().is_ok()).count(), 10);
    let mut rng = Rng::new(42);
    for i in 0..1000 {
        let count = EXACT_COUNTS[rng.below(EXACT_COUNTS.len())];
        limiter
            .reconfigure(limit(&clock, count, secs(1), 10))
            .unwrap();
        assert!(
            limiter.check().is_err(),
            "reload {i} to {count}/s readmitted part of the burst"
        );
    }
    limiter.reconfigure(limit(&clock, 10, secs(1), 10)).unwrap();
    assert_eq!(
        limiter.check(),
        Err(Rejected::RateLimited {
            retry_after: ms(100)
        }),
        "10 cells outstanding at 10/s, burst 10"
    );
    clock.advance(ms(100) - Duration::from_nanos(1));
    assert!(limiter.check().is_err());
    clock.advance(Duration::from_nanos(1));
    assert!(limiter.check().is_ok());
    assert!(limiter.check().is_err());
}

/// Contract: extreme rates (one a year, 500 million a second) rescale without overflow in
/// either direction, and a long rest gives exactly one burst.
#[test]
fn extreme_rates_rescale_both_ways_without_overflow() {
    let clock = FakeClock::new();
    let fast = || limit(&clock, 500_000_000, secs(1), 500);
    let slow = || limit(&clock, 1, YEAR, 500);
    let limiter = fast().build().unwrap();
    assert_eq!((0..600).filter(|_| limiter.check().is_ok()).count(), 500);
    limiter.reconfigure(slow()).unwrap();
    match limiter.check() {
        Err(Rejected::RateLimited { retry_after }) => assert!(
            retry_after.abs_diff(YEAR) <= ms(1),
            "500 cells outstanding at one a year: the next in a year, got {retry_after:?}"
        ),
        other => panic!("the spent burst must stay spent: {other:?}"),
    }
    clock.advance(YEAR - ms(1));
    assert!(limiter.check().is_err());
    clock.advance(ms(2));
    assert!(limiter.check().is_ok(), "one cell paid off after a year");
    assert!(limiter.check().is_err());

    limiter.reconfigure(fast()).unwrap();
    assert!(
        limiter.check().is_err(),
        "500 cells outstanding stay 500 at the fast rate"
    );
    clock.advance(Duration::from_nanos(1_000));
    assert_eq!(
        (0..600).filter(|_| limiter.check().is_ok()).count(),
        500,
        "1 µs pays off 500 cells"
    );

    clock.advance(YEAR * 50);
    limiter.reconfigure(slow()).unwrap();
    assert_eq!(
        (0..600).filter(|_| limiter.check().is_ok()).count(),
        500,
        "after 50 years of rest, exactly one burst"
    );
    limiter.reconfigure(fast()).unwrap();
    assert!(
        limiter.check().is_err(),
        "the slow burst just spent is not readmitted"
    );
    clock.advance(Duration::from_nanos(2));
    assert!(limiter.check().is_ok());
}

/// Contract (rate module docs): decisions are exact for 584 years of the limiter's life less
/// the length of a full burst; past that, a cell whose cost would reach beyond 584 years is
/// refused, never admitted. So a rested one-a-year limiter with a burst of 500 admits
/// exactly `min(500, cells whose cost still fits)` at once, at any age, built or reconfigured.
#[test]
fn an_aged_slow_limiter_never_admits_more_than_its_burst() {
    for years in [1u32, 80, 90, 200, 583] {
        let clock = FakeClock::new();
        let direct = limit(&clock, 1, YEAR, 500).build().unwrap();
        let reloaded = limit(&clock, 500_000_000, secs(1), 500).build().unwrap();
        clock.advance(YEAR * years);
        reloaded.reconfigure(limit(&clock, 1, YEAR, 500)).unwrap();
        let age = u64::try_from((YEAR * years).as_nanos()).unwrap();
        let year = u64::try_from(YEAR.as_nanos()).unwrap();
        let fits = usize::try_from((u64::MAX - age) / year).unwrap();
        let expected = fits.min(500);
        for (how, limiter) in [("built", &direct), ("reconfigured", &reloaded)] {
            let admitted = (0..600).filter(|_| limiter.check().is_ok()).count();
            assert_eq!(
                admitted, expected,
                "{how} one-a-year limiter, burst 500, {years} years old: admitted {admitted} at once"
            );
        }
    }
}

/// Contract: callers waiting in `until_ready` decide again with the new limit when they wake:
/// after a change from fast to slow, none is admitted on the old schedule.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn until_ready_waiters_follow_a_slower_limit_set_while_they_sleep() {
    let limiter = RateLimiter::builder(10, secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    assert!(limiter.check().is_ok());
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let limiter = limiter.clone();
        waiters.push(tokio::spawn(async move {
            limiter.until_ready().await.unwrap();
            tokio::time::Instant::now() - start
        }));
    }
    tokio::time::sleep(ms(50)).await;
    // Half a cell outstanding at 10/s is half a cell at 1 per 10 s: 5 s.
    limiter
        .reconfigure(
            RateLimiter::builder(1, secs(10))
                .burst(1)
                .jitter(Duration::ZERO),
        )
        .unwrap();
    let mut at = Vec::new();
    for waiter in waiters {
        at.push(
            tokio::time::timeout(secs(3600), waiter)
                .await
                .expect("a waiter hangs")
                .unwrap(),
        );
    }
    at.sort();
    assert!(
        at[0] >= ms(5_050) - ms(1) && at[0] <= ms(5_050) + ms(10),
        "the first waiter is admitted when half a slow cell is paid: {at:?}"
    );
    for pair in at.windows(2) {
        assert!(
            pair[1] - pair[0] >= secs(10) - ms(1),
            "one per 10 s after the change: {at:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Retry budgets
// ---------------------------------------------------------------------------------------------

fn budget_policy(ratio: f64, window: Duration, buckets: u32) -> RetryBudgetPolicy {
    RetryBudgetPolicy::builder()
        .ratio(ratio)
        .min_per_second(0)
        .window(window)
        .buckets(buckets)
        .build()
        .unwrap()
}

/// Contract: concurrent withdrawals never overdraw the budget across same-shape
/// reconfigurations, and the counts are kept: with the last ratio the total is exact.
#[test]
fn concurrent_withdrawals_across_ratio_reloads_never_overdraw() {
    let origin = Instant::now();
    let now = origin + secs(1);
    let budget = RetryBudget::new(budget_policy(0.1, secs(10), 10), origin);
    (0..1000).for_each(|_| budget.deposit(now));
    let granted = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(9));
    let mut threads = Vec::new();
    for _ in 0..8 {
        let (budget, granted, barrier) =
            (budget.clone(), Arc::clone(&granted), Arc::clone(&barrier));
        threads.push(std::thread::spawn(move || {
            barrier.wait();
            for _ in 0..400 {
                if budget.try_withdraw(now) {
                    granted.fetch_add(1, SeqCst);
                }
            }
        }));
    }
    {
        let budget = budget.clone();
        threads.push(std::thread::spawn(move || {
            barrier.wait();
            for i in 0..2000 {
                let ratio = [0.1, 0.05, 0.02, 0.08][i % 4];
                budget.reconfigure(budget_policy(ratio, secs(10), 10));
            }
            budget.reconfigure(budget_policy(0.1, secs(10), 10));
        }));
    }
    threads.into_iter().for_each(|t| t.join().unwrap());
    let during = granted.load(SeqCst);
    assert!(
        during <= 100,
        "{during} retries from 1000 calls at a ratio of at most 0.1"
    );
    let after = (0..200).filter(|_| budget.try_withdraw(now)).count();
    assert_eq!(
        during + after,
        100,
        "the counts were kept: 100 in all at 0.1"
    );
}

/// Contract: another shape (window or buckets) starts an empty window — the old calls and the
/// old retries are both gone; the same shape keeps them, even after a long idle gap.
#[test]
fn another_budget_shape_forgets_calls_and_retries_alike() {
    let origin = Instant::now();
    let t = |d: Duration| origin + d;
    let budget = RetryBudget::new(budget_policy(0.1, secs(10), 10), origin);
    (0..100).for_each(|_| budget.deposit(t(secs(1))));
    assert_eq!(
        (0..50).filter(|_| budget.try_withdraw(t(secs(1)))).count(),
        10
    );
    budget.reconfigure(budget_policy(0.1, secs(10), 20));
    assert!(
        !budget.has_balance(t(secs(1))),
        "an empty window without a floor"
    );
    (0..100).for_each(|_| budget.deposit(t(secs(1))));
    assert_eq!(
        (0..50).filter(|_| budget.try_withdraw(t(secs(1)))).count(),
        10,
        "the retries before the reshape are forgotten too"
    );
    budget.reconfigure(budget_policy(0.3, secs(10), 20));
    assert_eq!(
        (0..50).filter(|_| budget.try_withdraw(t(secs(5)))).count(),
        20,
        "kept: 30 of 100"
    );
    // Those calls leave the window after it passes.
    (0..10).for_each(|_| budget.deposit(t(secs(20))));
    assert_eq!(
        (0..50).filter(|_| budget.try_withdraw(t(secs(20)))).count(),
        3
    );
    // A year idle, then a same-shape change: nothing stale counts.
    let later = t(YEAR);
    budget.reconfigure(budget_policy(0.1, secs(10), 20));
    assert!(!budget.has_balance(later));
    (0..100).for_each(|_| budget.deposit(later));
    assert_eq!((0..50).filter(|_| budget.try_withdraw(later)).count(), 10);
    assert_eq!(budget.policy(), budget_policy(0.1, secs(10), 20));
}

// ---------------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------------

const BASE: &str = r#"
[defaults.bulkhead]
max_concurrent = 3
max_queue = 0
[defaults.rate_limit]
count = 10
period = "1s"
[instances.a.breaker]
consecutive_failures = 2
failure_rate = "off"
[instances.a.bulkhead]
max_concurrent = 2
[instances.a.rate_limit]
count = 5
period = "1s"
[instances.a.budget]
ratio = 0.1
min_per_second = 0
[instances.b.bulkhead]
max_concurrent = 4
"#;

/// Everything a reload could change, as text.
fn snapshot<R: Clock>(registry: &Registry<R>) -> String {
    let mut out = format!("{:?}\n", registry.config());
    for (name, b) in registry.breakers() {
        out += &format!(
            "breaker {name} {:?} {:?} {:?}\n",
            b.state(),
            b.counts(),
            b.policy()
        );
    }
    for (name, b) in registry.bulkheads() {
        out += &format!(
            "bulkhead {name} {} {} {} {}\n",
            b.capacity(),
            b.in_flight(),
            b.available(),
            b.queued()
        );
    }
    for (name, l) in registry.rate_limiters() {
        out += &format!("limiter {name} {:?}\n", l.gcra());
    }
    for (name, b) in registry.retry_budgets() {
        out += &format!("budget {name} {:?}\n", b.policy());
    }
    out
}

/// Contract: a refused reload changes nothing — no policy of any kind, no listing, not the
/// configuration — even when everything before the bad setting would apply, and it builds
/// none of the new instances it declares.
#[test]
fn a_refused_reload_changes_nothing_of_any_kind() {
    let clock = FakeClock::new();
    let registry = on(&clock, config(BASE));
    let breaker = registry.breaker("a").unwrap();
    let bulkhead = registry.bulkhead("a").unwrap();
    let limiter = registry.rate_limiter("a").unwrap();
    let budget = registry.retry_budget("a").unwrap();
    let _z = (
        registry.rate_limiter("z").unwrap(),
        registry.bulkhead("z").unwrap(),
    );
    let _held = bulkhead.try_acquire_owned().unwrap();
    assert!(limiter.check().is_ok() && limiter.check().is_ok());
    breaker.try_acquire().unwrap().failure();
    let now = clock.now();
    (0..100).for_each(|_| budget.deposit(now));
    assert!(budget.try_withdraw(now));
    let before = snapshot(&registry);

    // Valid elsewhere, different everywhere: a partial apply would show.
    let changed = r#"
[defaults.bulkhead]
max_concurrent = 30
max_queue = 0
[defaults.rate_limit]
count = 100
period = "1s"
[instances.a.breaker]
consecutive_failures = 9
window_calls = 20
[instances.a.bulkhead]
max_concurrent = 20
[instances.a.rate_limit]
count = 50
period = "1s"
[instances.a.budget]
ratio = 0.5
window = "20s"
[instances.b.bulkhead]
max_concurrent = 40
[instances.new.bulkhead]
max_concurrent = 1
[instances.new.breaker]
consecutive_failures = 1
"#;
    let mut bad: Vec<(&str, Config)> = Vec::new();
    let mut c = config(changed);
    c.instances
        .get_mut("b")
        .unwrap()
        .bulkhead
        .as_mut()
        .unwrap()
        .max_concurrent = Some(0);
    bad.push(("a zero bulkhead in the last instance", c));
    let mut c = config(changed);
    c.instances
        .get_mut("new")
        .unwrap()
        .breaker
        .as_mut()
        .unwrap()
        .consecutive_failures = Some(0);
    bad.push(("a zero run in a new instance", c));
    let mut c = config(changed);
    c.defaults.rate_limit.as_mut().unwrap().count = Some(700_000_000);
    bad.push(("a rate too fine in the defaults", c));
    let mut c = config(changed);
    c.instances
        .get_mut("a")
        .unwrap()
        .budget
        .as_mut()
        .unwrap()
        .ratio = Some(5000.0);
    bad.push(("a budget ratio out of range", c));
    let mut c = config(changed);
    {
        let b = c.instances.get_mut("a").unwrap().bulkhead.as_mut().unwrap();
        b.max_queue = Some(5);
        b.max_wait = Some(tidewall::config::Toggle::On(Duration::ZERO));
    }
    bad.push(("a zero wait with a queue", c));
    let mut c = config(changed);
    c.defaults.rate_limit = None;
    bad.push(("the defaults z's limiter was built from, removed", c));
    let mut c = config(changed);
    c.defaults.bulkhead = None;
    bad.push(("the defaults z's bulkhead was built from, removed", c));
    let mut c = config(changed);
    c.instances.get_mut("a").unwrap().base = Some("nowhere".into());
    bad.push(("an unknown base", c));

    for (what, c) in bad {
        let err = registry.reload(c).expect_err(what);
        assert!(
            !err.path().is_empty() || matches!(err.problem(), Problem::UnknownBase(_)),
            "{what}: {err}"
        );
        assert_eq!(
            snapshot(&registry),
            before,
            "{what}: a refused reload changed something ({err})"
        );
    }
    // The registry still reloads, with the permit still held.
    let reload = registry.reload(config(changed)).unwrap();
    assert_eq!(reload.reset, ["a"]);
    assert_eq!((bulkhead.capacity(), bulkhead.in_flight()), (20, 1));
    assert!(registry.bulkheads().iter().any(|(n, _)| n == "new"));
}

/// Contract: reloads racing get-or-create on other threads leave every policy on the
/// configuration in force: none is built from the old one after the reload, none is listed
/// twice, and capacity is conserved.
#[test]
fn reloads_racing_get_or_create_leave_no_policy_on_a_stale_configuration() {
    let text = |cap: usize, count: u32, calls: u32, ratio: f64, declared: &str, own: usize| {
        format!(
            "[defaults.bulkhead]\nmax_concurrent = {cap}\nmax_queue = 0\n\
             [defaults.rate_limit]\ncount = {count}\nperiod = \"1s\"\n\
             [defaults.breaker]\nwindow_calls = {calls}\n\
             [defaults.budget]\nratio = {ratio}\n\
             [instances.{declared}.bulkhead]\nmax_concurrent = {own}\n"
        )
    };
    let a = text(3, 10, 10, 0.1, "d1", 5);
    let b = text(6, 20, 20, 0.3, "d2", 2);
    let clock = FakeClock::new();
    let registry = Arc::new(on(&clock, config(&a)));
    let names: Vec<String> = ["d1", "d2"]
        .iter()
        .map(|s| s.to_string())
        .chain((0..40).map(|i| format!("u{i}")))
        .collect();
    let names = Arc::new(names);
    let barrier = Arc::new(Barrier::new(5));
    let mut threads = Vec::new();
    for seed in 1..=4u64 {
        let (registry, names, barrier, clock) = (
            Arc::clone(&registry),
            Arc::clone(&names),
            Arc::clone(&barrier),
            clock.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng::new(seed * 0x1234_5678_9ABC);
            barrier.wait();
            for _ in 0..3000 {
                let name = &names[rng.below(names.len())];
                match rng.below(4) {
                    0 => {
                        let b = registry.bulkhead(name).unwrap();
                        let permit = b.try_acquire();
                        drop(permit);
                    }
                    1 => {
                        let _ = registry.rate_limiter(name).unwrap().check();
                    }
                    2 => {
                        if let Ok(p) = registry.breaker(name).unwrap().try_acquire() {
                            p.success();
                        }
                    }
                    _ => registry.retry_budget(name).unwrap().deposit(clock.now()),
                }
            }
        }));
    }
    {
        let registry = Arc::clone(&registry);
        let (a, b) = (config(&a), config(&b));
        threads.push(std::thread::spawn(move || {
            barrier.wait();
            for i in 0..400 {
                let next = if i % 2 == 0 { b.clone() } else { a.clone() };
                registry.reload(next).unwrap();
            }
        }));
    }
    threads.into_iter().for_each(|t| t.join().unwrap());
    // The last reload (i = 399) applied `a`.
    let universe: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let check_names = |list: Vec<String>, kind: &str| {
        let set: BTreeSet<_> = list.iter().cloned().collect();
        assert_eq!(set.len(), list.len(), "{kind} listed twice: {list:?}");
        let mut sorted = list.clone();
        sorted.sort();
        assert_eq!(list, sorted, "{kind} listed by name");
        assert!(
            list.iter().all(|n| universe.contains(n.as_str())),
            "{kind}: {list:?}"
        );
    };
    let bulkheads = registry.bulkheads();
    check_names(
        bulkheads.iter().map(|(n, _)| n.to_string()).collect(),
        "bulkheads",
    );
    for (name, b) in &bulkheads {
        let expected = if name == "d1" { 5 } else { 3 };
        assert_eq!(
            b.capacity(),
            expected,
            "bulkhead {name} is on a stale configuration"
        );
        assert_eq!(
            (b.available(), b.in_flight()),
            (expected, 0),
            "bulkhead {name}"
        );
    }
    let limiters = registry.rate_limiters();
    check_names(
        limiters.iter().map(|(n, _)| n.to_string()).collect(),
        "limiters",
    );
    for (name, l) in &limiters {
        assert_eq!(
            l.gcra().interval_nanos(),
            100_000_000,
            "limiter {name} is stale"
        );
    }
    let breakers = registry.breakers();
    check_names(
        breakers.iter().map(|(n, _)| n.to_string()).collect(),
        "breakers",
    );
    for (name, b) in &breakers {
        assert_eq!(
            b.policy().window(),
            Window::Count { calls: 10 },
            "breaker {name} is stale"
        );
    }
    let budgets = registry.retry_budgets();
    check_names(
        budgets.iter().map(|(n, _)| n.to_string()).collect(),
        "budgets",
    );
    for (name, b) in &budgets {
        assert_eq!(b.policy().ratio_ppm(), 100_000, "budget {name} is stale");
    }
}

/// Contract: thousands of reloads that add and remove declared names keep the listings exact,
/// build exactly the newly declared policies, retune every held one, and leak no capacity
/// from permits held across them.
#[test]
fn thousands_of_reloads_adding_and_removing_names_leak_nothing() {
    let text = |i: usize| {
        let cap = |k: usize| 1 + (i + k) % 4;
        let mut t = format!(
            "[defaults.bulkhead]\nmax_concurrent = {}\nmax_queue = 0\n[defaults.rate_limit]\ncount = {}\nperiod = \"1s\"\n",
            10 + i % 2,
            100 + i % 2
        );
        for k in 0..2 {
            let n = (i + k) % 5;
            t += &format!(
                "[instances.n{n}.bulkhead]\nmax_concurrent = {}\n[instances.n{n}.rate_limit]\ncount = {}\nperiod = \"1s\"\n",
                cap(k),
                cap(k)
            );
        }
        t
    };
    let clock = FakeClock::new();
    let registry = on(&clock, config(&text(0)));
    let mut held: HashMap<String, Vec<OwnedPermit<FakeClock>>> = HashMap::new();
    let mut known: BTreeSet<String> = ["n0", "n1"].iter().map(|s| s.to_string()).collect();
    let mut rng = Rng::new(7);
    let _extra = registry.bulkhead("undeclared").unwrap();
    known.insert("undeclared".into());
    let _extra_limiter = registry.rate_limiter("undeclared").unwrap();
    for i in 1..3000 {
        let declared: BTreeSet<String> = (0..2).map(|k| format!("n{}", (i + k) % 5)).collect();
        let new = declared.difference(&known).count();
        let held_before = registry.bulkheads().len() + registry.rate_limiters().len();
        let reload = registry.reload(config(&text(i))).unwrap();
        assert_eq!(
            reload.built,
            2 * new,
            "reload {i}: a bulkhead and a limiter per new name"
        );
        assert_eq!(
            reload.retuned, held_before,
            "reload {i}: every held policy changed settings"
        );
        assert!(reload.reset.is_empty());
        known.extend(declared);
        let listed: BTreeSet<String> = registry
            .bulkheads()
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(listed, known, "reload {i}");
        let listed: BTreeSet<String> = registry
            .rate_limiters()
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(listed, known, "reload {i}");
        // Take and give back permits at random, across the reloads.
        for (name, b) in registry.bulkheads() {
            let mine = held.entry(name.to_string()).or_default();
            if rng.below(2) == 0 {
                if let Ok(p) = b.try_acquire_owned() {
                    mine.push(p);
                }
            } else if !mine.is_empty() {
                let k = rng.below(mine.len());
                drop(mine.swap_remove(k));
            }
            assert_eq!(b.in_flight(), mine.len(), "reload {i}: bulkhead {name}");
        }
    }
    held.clear();
    for (name, b) in registry.bulkheads() {
        assert_eq!(
            (b.available(), b.in_flight()),
            (b.capacity(), 0),
            "bulkhead {name}"
        );
    }
}

/// Contract: the registry holds at most `max_instances` policies of a kind and keeps a place
/// for every declared instance: a reload declaring a new instance when undeclared names fill
/// every place is either refused whole or serves the declared instance within the bound.
#[test]
fn a_reload_declaring_an_instance_into_a_full_registry_keeps_the_bound() {
    let clock = FakeClock::new();
    let registry = Registry::builder(config("[defaults.bulkhead]\nmax_concurrent = 7\n"))
        .runtime(clock.clone())
        .max_instances(3)
        .build()
        .unwrap();
    for name in ["x", "y", "z"] {
        registry.bulkhead(name).unwrap();
    }
    let before = snapshot(&registry);
    let result = registry.reload(config(
        "[defaults.bulkhead]\nmax_concurrent = 7\n[instances.a.bulkhead]\nmax_concurrent = 2\n",
    ));
    match result {
        Ok(_) => {
            let a = registry
                .bulkhead("a")
                .expect("a declared instance keeps a place");
            assert_eq!(a.capacity(), 2);
            assert!(
                registry.bulkheads().len() <= 3,
                "at most 3 bulkheads, got {:?}",
                registry
                    .bulkheads()
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect::<Vec<_>>()
            );
        }
        Err(err) => {
            assert!(matches!(err.problem(), Problem::Full { .. }), "{err}");
            assert_eq!(snapshot(&registry), before, "refused: nothing changed");
        }
    }
}

/// Contract: a registry shared through `Arc` by many threads while another reloads in a loop:
/// every permit taken is given back, and the listing is exactly the names asked for.
#[test]
fn a_shared_registry_under_threads_and_reloads_conserves_every_permit() {
    for round in 0..8 {
        shared_registry_round(round);
    }
}

fn shared_registry_round(round: u64) {
    let clock = FakeClock::new();
    let registry = Arc::new(on(&clock, config(&bulkhead_text("s", 4, 0))));
    let max_cap = 6;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for seed in 1..=4u64 {
        let (registry, stop) = (Arc::clone(&registry), Arc::clone(&stop));
        workers.push(std::thread::spawn(move || {
            let mut rng = Rng::new(seed * 0x9E37_79B9 + round);
            let mut mine = Vec::new();
            let mut rounds = 0u32;
            while !stop.load(SeqCst) || rounds < 500 {
                rounds += 1;
                let name = ["s", "t", "u"][rng.below(3)];
                let b = match registry.bulkhead(name) {
                    Ok(b) => b,
                    Err(e) => {
                        assert_ne!(name, "s", "{e}");
                        continue;
                    }
                };
                if rng.below(2) == 0 {
                    if let Ok(p) = b.try_acquire_owned() {
                        assert!(b.in_flight() <= max_cap.max(16), "{}", b.in_flight());
                        mine.push(p);
                    }
                } else if !mine.is_empty() {
                    let k = rng.below(mine.len());
                    drop(mine.swap_remove(k));
                }
            }
        }));
    }
    for i in 0..1500 {
        let cap = 1 + i % max_cap;
        let mut t = bulkhead_text("s", cap, 0);
        if i % 3 == 0 {
            t += "[defaults.bulkhead]\nmax_concurrent = 16\nmax_queue = 0\n";
        } else {
            t += "[defaults.bulkhead]\nmax_concurrent = 8\nmax_queue = 0\n";
        }
        registry.reload(config(&t)).unwrap();
    }
    registry
        .reload(config(&format!(
            "{}[defaults.bulkhead]\nmax_concurrent = 8\nmax_queue = 0\n",
            bulkhead_text("s", 5, 0)
        )))
        .unwrap();
    stop.store(true, SeqCst);
    workers.into_iter().for_each(|w| w.join().unwrap());
    let listed: Vec<String> = registry
        .bulkheads()
        .into_iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert!(
        listed.iter().all(|n| ["s", "t", "u"].contains(&n.as_str())),
        "{listed:?}"
    );
    for (name, b) in registry.bulkheads() {
        let expected = if name == "s" { 5 } else { 8 };
        assert_eq!(b.capacity(), expected, "bulkhead {name}");
        assert_eq!(
            (b.available(), b.in_flight()),
            (expected, 0),
            "bulkhead {name} leaked"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Composition
// ---------------------------------------------------------------------------------------------

/// Contract: a pipeline made of registry policies keeps running while reloads change every
/// stage: every call ends, no more calls run than the capacity allows (nothing new is admitted
/// over it), and the bulkhead's capacity is conserved at the end.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pipeline_of_registry_policies_runs_through_reloads() {
    let text = |cap: usize, count: u32, calls: u32, window: &str| {
        format!(
            "[instances.p.rate_limit]\ncount = {count}\nperiod = \"1s\"\nburst = 20\n\
             [instances.p.bulkhead]\nmax_concurrent = {cap}\nmax_queue = 1000\nmax_wait = \"off\"\n\
             [instances.p.retry]\nmax_attempts = 3\ninitial_delay = \"10ms\"\nmax_delay = \"50ms\"\n\
             [instances.p.breaker]\nconsecutive_failures = 5\nfailure_rate = \"off\"\nwindow_calls = {calls}\nbreak_duration = \"100ms\"\n\
             [instances.p.budget]\nratio = 0.5\nmin_per_second = 10\nwindow = \"{window}\"\n"
        )
    };
    let registry = Arc::new(Registry::new(config(&text(4, 200, 10, "10s"))).unwrap());
    let bulkhead = registry.bulkhead("p").unwrap();
    let backoff = registry.config().instance("p").unwrap().backoff().unwrap();
    let pipeline = Arc::new(
        Pipeline::builder()
            .rate_limit(registry.rate_limiter("p").unwrap())
            .bulkhead(bulkhead.clone())
            .retry(backoff)
            .retry_budget(registry.retry_budget("p").unwrap())
            .breaker(registry.breaker("p").unwrap())
            .build()
            .unwrap(),
    );
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let mut rng = Rng::new(0xC0FF_EE00_1234);
    let mut calls = Vec::new();
    for id in 0..300u64 {
        let start = ms(rng.below(3000) as u64);
        let (pipeline, running, most) = (
            Arc::clone(&pipeline),
            Arc::clone(&running),
            Arc::clone(&most),
        );
        let mut op_rng = Rng::new(id * 7919 + 1);
        calls.push(tokio::spawn(async move {
            tokio::time::sleep(start).await;
            pipeline
                .call(|| {
                    let fail = op_rng.below(5) == 0;
                    let took = ms(1 + op_rng.below(80) as u64);
                    let (running, most) = (Arc::clone(&running), Arc::clone(&most));
                    async move {
                        let now = running.fetch_add(1, SeqCst) + 1;
                        most.fetch_max(now, SeqCst);
                        tokio::time::sleep(took).await;
                        running.fetch_sub(1, SeqCst);
                        if fail { Err("boom") } else { Ok(()) }
                    }
                })
                .await
        }));
    }
    let mut cap = 4usize;
    let mut prev_in_flight = 0usize;
    let mut max_cap = cap;
    for tick in 0..500 {
        tokio::time::sleep(ms(7)).await;
        let in_flight = bulkhead.in_flight();
        assert!(
            in_flight <= cap.max(prev_in_flight),
            "tick {tick}: in_flight grew to {in_flight} past the capacity {cap} (was {prev_in_flight})"
        );
        assert!(
            running.load(SeqCst) <= in_flight,
            "tick {tick}: an op runs without a slot"
        );
        if bulkhead.queued() > 0 {
            assert!(
                in_flight >= cap,
                "tick {tick}: callers wait while a slot is free"
            );
        }
        cap = 1 + rng.below(6);
        max_cap = max_cap.max(cap);
        let count = [50, 100, 200, 400][rng.below(4)];
        let calls_n = [10, 20][rng.below(2)];
        let window = ["10s", "20s"][rng.below(2)];
        registry
            .reload(config(&text(cap, count, calls_n, window)))
            .unwrap();
        prev_in_flight = bulkhead.in_flight();
        assert!(
            prev_in_flight <= in_flight.max(cap),
            "tick {tick}: the reload itself admitted past the capacity"
        );
    }
    let mut outcomes = HashMap::new();
    for call in calls {
        let result = tokio::time::timeout(secs(3600), call)
            .await
            .expect("a call hangs")
            .unwrap();
        let kind = match result {
            Ok(()) => "ok".to_string(),
            Err(Error::Inner(_)) => "inner".to_string(),
            Err(Error::Rejected(r)) => format!("{r:?}")
                .split([' ', '{'])
                .next()
                .unwrap()
                .to_string(),
            Err(_) => "other".to_string(),
        };
        *outcomes.entry(kind).or_insert(0usize) += 1;
    }
    assert!(outcomes.get("ok").copied().unwrap_or(0) > 0, "{outcomes:?}");
    assert!(
        most.load(SeqCst) <= max_cap,
        "{} ops at once, capacity never above {max_cap}",
        most.load(SeqCst)
    );
    assert_eq!(running.load(SeqCst), 0);
    assert_eq!(
        bulkhead.available(),
        bulkhead.capacity(),
        "capacity conserved ({outcomes:?})"
    );
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
}

/// Contract: "Permits are RAII ... Nothing leaks" and `available() == capacity()` once nothing
/// runs, with `reconfigure` racing acquisitions and releases on other threads (debug builds
/// panic at a slot released twice, per `available`'s docs).
#[test]
fn bulkhead_reconfigure_racing_releases_on_threads_conserves_capacity() {
    for round in 0..60 {
        let clock = FakeClock::new();
        let bulkhead = Bulkhead::builder(4)
            .max_queue(0)
            .runtime(clock.clone())
            .build()
            .unwrap();
        let barrier = Arc::new(Barrier::new(5));
        let mut threads = Vec::new();
        for seed in 1..=4u64 {
            let (bulkhead, barrier) = (bulkhead.clone(), Arc::clone(&barrier));
            threads.push(std::thread::spawn(move || {
                let mut rng = Rng::new(seed * 0x2545_F491_4F6C_DD1D + round);
                let mut mine = Vec::new();
                barrier.wait();
                for _ in 0..5000 {
                    if rng.below(2) == 0 {
                        if let Ok(p) = bulkhead.try_acquire_owned() {
                            mine.push(p);
                        }
                    } else if !mine.is_empty() {
                        let k = rng.below(mine.len());
                        drop(mine.swap_remove(k));
                    }
                }
            }));
        }
        {
            let (bulkhead, clock) = (bulkhead.clone(), clock.clone());
            threads.push(std::thread::spawn(move || {
                barrier.wait();
                for i in 0..5000 {
                    let cap = 1 + i % 8;
                    bulkhead
                        .reconfigure(Bulkhead::builder(cap).max_queue(0).runtime(clock.clone()))
                        .unwrap();
                }
                bulkhead
                    .reconfigure(Bulkhead::builder(5).max_queue(0).runtime(clock))
                    .unwrap();
            }));
        }
        let panics: Vec<String> = threads
            .into_iter()
            .filter_map(|t| t.join().err())
            .map(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            })
            .collect();
        assert!(panics.is_empty(), "round {round}: {panics:?}");
        assert_eq!(
            (
                bulkhead.capacity(),
                bulkhead.available(),
                bulkhead.in_flight()
            ),
            (5, 5, 0),
            "round {round}: capacity not conserved"
        );
    }
}

/// Contract: "A decision racing the change uses the old limit or the new one" and the cells
/// admitted stay admitted: at one frozen instant, with every limit's burst 10, threads checking
/// while another thread reconfigures thousands of times can never get more than 10 cells.
#[test]
fn rate_reconfigure_racing_checks_on_threads_never_readmits_spent_cells() {
    for round in 0..20u32 {
        let clock = FakeClock::new();
        let limiter = limit(&clock, 10, secs(1), 10).build().unwrap();
        let admitted = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(5));
        let mut threads = Vec::new();
        for _ in 0..4 {
            let (limiter, admitted, barrier) =
                (limiter.clone(), Arc::clone(&admitted), Arc::clone(&barrier));
            threads.push(std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..5000 {
                    if limiter.check().is_ok() {
                        admitted.fetch_add(1, SeqCst);
                    }
                }
            }));
        }
        {
            let (limiter, clock) = (limiter.clone(), clock.clone());
            threads.push(std::thread::spawn(move || {
                barrier.wait();
                for i in 0..3000 {
                    let count = [10, 1000, 1, 250][i % 4];
                    limiter
                        .reconfigure(limit(&clock, count, secs(1), 10))
                        .unwrap();
                }
            }));
        }
        threads.into_iter().for_each(|t| t.join().unwrap());
        let admitted = admitted.load(SeqCst);
        assert!(
            admitted <= 10,
            "round {round}: {admitted} cells at one instant with a burst of 10"
        );
    }
}
