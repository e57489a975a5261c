//! loom models of the lock-free parts: the half-open probe reservation, the bulkhead's
//! release-versus-enqueue race (and its priorities: a sheddable waiter's share, a waiter shed
//! while it gives up), the bucket ring's sweep racing a write, a count window's writers
//! lapping each other, and an adaptive call that skips its algorithm's lock racing one that
//! takes it. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p tidewall --no-default-features --test loom --release`
//! (scripts/test does, in its own target directory).
#![cfg(loom)]

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Context;
use std::time::{Duration, Instant};

use tidewall::adaptive::FixedLimit;
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::rt::Clock;

/// A clock the model sets by hand; it spawns nothing.
#[derive(Clone, Default)]
struct ModelClock {
    offset_nanos: std::sync::Arc<AtomicU64>,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

impl ModelClock {
    fn advance(&self, by: Duration) {
        self.offset_nanos
            .fetch_add(u64::try_from(by.as_nanos()).unwrap(), Ordering::SeqCst);
    }
}

impl Clock for ModelClock {
    type Sleep = std::future::Pending<()>;

    fn now(&self) -> Instant {
        base() + Duration::from_nanos(self.offset_nanos.load(Ordering::SeqCst))
    }

    fn sleep_until(&self, _: Instant) -> Self::Sleep {
        std::future::pending()
    }
}

fn half_open_breaker() -> CircuitBreaker<ModelClock> {
    half_open_breaker_with(1)
}

fn half_open_breaker_with(probes: u32) -> CircuitBreaker<ModelClock> {
    let clock = ModelClock::default();
    let breaker = CircuitBreaker::builder()
        .runtime(clock.clone())
        .consecutive_failures(1)
        .break_duration(Duration::from_millis(1))
        .half_open_probes(probes)
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    clock.advance(Duration::from_millis(1));
    breaker
}

/// Three callers race for `slots` half-open probe slots: exactly `slots` win, in every
/// interleaving, including the one that performs the open → half-open transition.
fn three_racers_get_exactly(slots: u32) {
    loom::model(move || {
        let breaker = half_open_breaker_with(slots);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let breaker = breaker.clone();
                loom::thread::spawn(move || breaker.try_acquire_owned().ok())
            })
            .collect();
        let mut permits = vec![breaker.try_acquire_owned().ok()];
        permits.extend(threads.into_iter().map(|t| t.join().unwrap()));
        assert_eq!(
            permits.iter().flatten().count(),
            usize::try_from(slots).unwrap()
        );
    });
}

#[test]
fn exactly_one_probe_is_admitted() {
    three_racers_get_exactly(1);
}

#[test]
fn exactly_two_of_three_with_two_slots() {
    three_racers_get_exactly(2);
}

/// With two probe slots, a success and a failure finish at once: whatever the order, one
/// failed probe reopens the breaker and a lone success never closes it.
#[test]
fn a_probe_failure_wins_over_a_concurrent_success() {
    loom::model(|| {
        let breaker = half_open_breaker_with(2);
        let (first, second) = (
            breaker.try_acquire_owned().unwrap(),
            breaker.try_acquire_owned().unwrap(),
        );
        let racer = loom::thread::spawn(move || first.success());
        second.failure();
        racer.join().unwrap();
        assert_eq!(breaker.state(), State::Open, "{:?}", breaker.counts());
    });
}

/// Two retries racing across a bucket boundary for the budget's last retry: only one gets it.
#[test]
fn the_retry_budget_is_never_overdrawn_across_a_bucket_boundary() {
    use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
    loom::model(|| {
        // Ratio 0 and a floor of 1 retry per 10 s window: exactly one retry in the window.
        let policy = RetryBudgetPolicy::builder()
            .ratio(0.0)
            .min_per_second(1)
            .window(Duration::from_secs(1))
            .buckets(10)
            .build()
            .unwrap();
        let origin = base();
        let budget = RetryBudget::new(policy, origin);
        let late = {
            let budget = budget.clone();
            // The next bucket (100 ms buckets), still inside the window.
            loom::thread::spawn(move || budget.try_withdraw(origin + Duration::from_millis(150)))
        };
        let early = budget.try_withdraw(origin + Duration::from_millis(50));
        let late = late.join().unwrap();
        assert_eq!(u8::from(early) + u8::from(late), 1);
    });
}

/// A deposit racing the sweep that keeps bucket stamps exact (the first use 2^14 buckets after
/// the last sweep): the sweep empties the stale bucket and never the fresh deposit, in every
/// interleaving.
#[test]
fn a_sweep_never_loses_a_racing_deposit() {
    use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
    // The sweep interval of tidewall_core::breaker::window::SWEEP_EVERY, in 1 ns buckets.
    const SWEEP_EVERY: u64 = 1 << 14;
    loom::model(|| {
        // Ratio 1 and no floor: one retry per deposit in the window of two 1 ns buckets.
        let policy = RetryBudgetPolicy::builder()
            .ratio(1.0)
            .min_per_second(0)
            .window(Duration::from_nanos(2))
            .buckets(2)
            .build()
            .unwrap();
        let origin = base();
        let at = move |bucket: u64| origin + Duration::from_nanos(bucket);
        let budget = RetryBudget::new(policy, origin);
        // Bucket 0's deposit will be long stale; its stamp must not come back.
        budget.deposit(at(0));
        let writer = {
            let budget = budget.clone();
            // Bucket 2^14 - 1: no sweep due yet for this caller.
            loom::thread::spawn(move || budget.deposit(at(SWEEP_EVERY - 1)))
        };
        // Bucket 2^14: this caller sweeps. (Both callers on spawned threads: loom then
        // explores the write landing before, during and after the sweep.)
        let sweeper = {
            let budget = budget.clone();
            loom::thread::spawn(move || budget.has_balance(at(SWEEP_EVERY)))
        };
        writer.join().unwrap();
        sweeper.join().unwrap();
        // Live at 2^14: buckets 2^14 - 1 and 2^14, so exactly the racing deposit.
        assert!(budget.try_withdraw(at(SWEEP_EVERY)));
        assert!(!budget.try_withdraw(at(SWEEP_EVERY)));
    });
}

/// A probe dropped while another caller races for the slot: the slot is never lost, so a
/// success afterwards always closes the breaker.
#[test]
fn a_dropped_probe_returns_its_slot_in_every_interleaving() {
    loom::model(|| {
        let breaker = half_open_breaker();
        let probe = breaker.try_acquire_owned().unwrap();
        let racer = {
            let breaker = breaker.clone();
            loom::thread::spawn(move || breaker.try_acquire_owned().ok())
        };
        drop(probe);
        match racer.join().unwrap() {
            Some(probe) => probe.success(),
            None => breaker.try_acquire().unwrap().success(),
        }
        assert_eq!(breaker.state(), State::Closed);
    });
}

/// "An outcome from an earlier state never moves the current one": a closed call's failure
/// racing a reset never lands in the fresh window or its run of failures, whichever order the
/// two take (it checked its generation just before the reset, then recorded).
#[test]
fn an_outcome_racing_a_reset_never_reaches_the_fresh_window() {
    loom::model(|| {
        let breaker = CircuitBreaker::builder()
            .runtime(ModelClock::default())
            .consecutive_failures(2)
            .build()
            .unwrap();
        let permit = breaker.try_acquire_owned().unwrap();
        let failing = loom::thread::spawn(move || permit.failure());
        breaker.reset();
        failing.join().unwrap();
        assert_eq!(breaker.counts().calls, 0, "the reset forgot the call");
        // Nor its failure in the run: one more failure makes a run of one, not two.
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), State::Closed);
    });
}

/// A count window's failure count never reads above what its slots hold, however the
/// writers of one slot interleave: a writer lapped by the cursor between its slot's swap and
/// its totals update must not let a later writer's failure be counted before its own success
/// is (a window of two calls holding one failure read as two would trip a breaker at 100 %).
#[test]
fn a_lapped_count_window_never_over_reads_its_failures() {
    loom::model(|| {
        let breaker = CircuitBreaker::builder()
            .runtime(ModelClock::default())
            .window(tidewall::breaker::Window::Count { calls: 2 })
            .failure_rate(1.0)
            .minimum_calls(2)
            .build()
            .unwrap();
        // Slot 0 a failure, slot 1 a success; the cursor at 2, back on slot 0.
        breaker.try_acquire().unwrap().failure();
        breaker.try_acquire().unwrap().success();
        let other = breaker.clone();
        let success = loom::thread::spawn(move || other.try_acquire().unwrap().success());
        // A success then a failure: whichever slots the three calls take, the window never
        // holds two failures.
        breaker.try_acquire().unwrap().success();
        if let Ok(permit) = breaker.try_acquire() {
            permit.failure();
        }
        success.join().unwrap();
        assert_eq!(breaker.state(), State::Closed);
        let counts = breaker.counts();
        assert!(counts.calls == 2 && counts.failures <= 1, "{counts:?}");
    });
}

fn bulkhead() -> Bulkhead<ModelClock> {
    Bulkhead::builder(1)
        .max_queue(4)
        .max_wait(None)
        .runtime(ModelClock::default())
        .build()
        .unwrap()
}

/// A release racing with a waiter that is enqueueing: the waiter always gets the permit
/// (a lost wake-up would deadlock, which loom reports).
#[test]
fn a_release_always_reaches_a_waiter() {
    loom::model(|| {
        let bulkhead = bulkhead();
        let held = bulkhead.try_acquire().unwrap();
        let waiter = {
            let bulkhead = bulkhead.clone();
            loom::thread::spawn(move || {
                loom::future::block_on(bulkhead.acquire()).map(drop).is_ok()
            })
        };
        drop(held);
        assert!(waiter.join().unwrap());
        assert_eq!(bulkhead.in_flight(), 0);
    });
}

/// A grow racing a release and a waiter that is enqueueing: the waiter gets a permit (a lost
/// wake-up would deadlock, which loom reports), and once everything is back the bulkhead holds
/// exactly its new capacity.
#[test]
fn a_grow_always_reaches_a_waiter() {
    loom::model(|| {
        let bulkhead = bulkhead();
        let held = bulkhead.try_acquire().unwrap();
        let waiter = {
            let bulkhead = bulkhead.clone();
            loom::thread::spawn(move || {
                loom::future::block_on(bulkhead.acquire()).map(drop).is_ok()
            })
        };
        let grower = {
            let bulkhead = bulkhead.clone();
            loom::thread::spawn(move || {
                bulkhead
                    .reconfigure(Bulkhead::builder(2).max_queue(4).max_wait(None))
                    .unwrap();
            })
        };
        assert!(waiter.join().unwrap());
        grower.join().unwrap();
        drop(held);
        assert_eq!((bulkhead.in_flight(), bulkhead.available()), (0, 2));
    });
}

/// A shrink racing the release of a held permit and a caller taking one: nothing held is
/// revoked, at most one newcomer gets in while two were held under a limit of one, and once
/// everything is back the bulkhead holds exactly its new capacity.
#[test]
fn a_shrink_never_revokes_and_never_overadmits() {
    loom::model(|| {
        let bulkhead = Bulkhead::builder(2)
            .max_queue(0)
            .runtime(ModelClock::default())
            .build()
            .unwrap();
        let first = bulkhead.try_acquire_owned().unwrap();
        let second = bulkhead.try_acquire_owned().unwrap();
        let releaser = loom::thread::spawn(move || drop(first));
        let shrinker = {
            let bulkhead = bulkhead.clone();
            loom::thread::spawn(move || {
                bulkhead
                    .reconfigure(Bulkhead::builder(1).max_queue(0))
                    .unwrap();
            })
        };
        let newcomer = bulkhead.try_acquire_owned().ok();
        releaser.join().unwrap();
        shrinker.join().unwrap();
        // `second` is still held: with the limit at 1, only a newcomer that came before the
        // shrink may be in as well.
        let held = 1 + usize::from(newcomer.is_some());
        assert_eq!(bulkhead.in_flight(), held);
        assert!(
            bulkhead.try_acquire().is_err(),
            "at or over the new limit of one"
        );
        drop((newcomer, second));
        assert_eq!((bulkhead.in_flight(), bulkhead.available()), (0, 1));
    });
}

/// A limit replaced while a caller reads it: the caller sees the old limit or the new one,
/// whole, never the interval of one with the burst of the other.
#[test]
fn a_reconfigured_limit_is_read_whole() {
    loom::model(|| {
        let slow = tidewall::rate::RateLimiter::builder(1, Duration::from_secs(1)).burst(1);
        let fast = tidewall::rate::RateLimiter::builder(1000, Duration::from_secs(1)).burst(50);
        let limiter = slow.clone().runtime(ModelClock::default()).build().unwrap();
        let (before, after) = (
            limiter.gcra(),
            fast.clone()
                .runtime(ModelClock::default())
                .build()
                .unwrap()
                .gcra(),
        );
        let writer = {
            let limiter = limiter.clone();
            loom::thread::spawn(move || limiter.reconfigure(fast).unwrap())
        };
        let seen = limiter.gcra();
        assert!(seen == before || seen == after, "a mixed limit: {seen:?}");
        writer.join().unwrap();
        assert_eq!(limiter.gcra(), after);
    });
}

/// A decision racing a change of rate: with the burst spent, the cells owed stay owed under
/// either limit (the rescale keeps them), so the caller is refused in every interleaving this
/// model explores. (It does not reach the pairing of the old limit with the rescaled state
/// that the limiter's sequence check prevents: removing that check still passes here, and is
/// caught by the threads of `hostile_reload.rs::rate_reconfigure_racing_checks_*`.)
#[test]
fn a_decision_racing_a_reconfigure_never_readmits_a_spent_burst() {
    loom::model(|| {
        let slow = tidewall::rate::RateLimiter::builder(1, Duration::from_secs(1)).burst(2);
        let fast = tidewall::rate::RateLimiter::builder(1000, Duration::from_secs(1)).burst(2);
        let limiter = slow.runtime(ModelClock::default()).build().unwrap();
        assert!(limiter.check().is_ok() && limiter.check().is_ok());
        let writer = {
            let limiter = limiter.clone();
            loom::thread::spawn(move || limiter.reconfigure(fast).unwrap())
        };
        assert!(limiter.check().is_err(), "a spent burst was readmitted");
        writer.join().unwrap();
        assert!(limiter.check().is_err());
    });
}

/// A waiter that gives up while the permit is being handed to it: the permit is passed on,
/// never lost.
#[test]
fn a_cancelled_waiter_never_loses_the_permit() {
    loom::model(|| {
        let bulkhead = bulkhead();
        let held = bulkhead.try_acquire().unwrap();
        let waiter = {
            let bulkhead = bulkhead.clone();
            loom::thread::spawn(move || {
                let mut acquire = Box::pin(bulkhead.acquire());
                let waker = futures_util::task::noop_waker();
                let polled = acquire.as_mut().poll(&mut Context::from_waker(&waker));
                drop(polled);
                drop(acquire);
            })
        };
        drop(held);
        waiter.join().unwrap();
        assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
        assert!(bulkhead.try_acquire().is_ok());
    });
}

/// A permit on a key dropped while another thread sweeps the full key table for a new key:
/// the key is forgotten only once no permit is out (a permit counted in a forgotten bulkhead
/// would be capacity lost), and the new key is admitted or honestly refused.
#[test]
fn a_key_is_never_forgotten_while_its_permit_is_out() {
    loom::model(|| {
        let bulkheads = Bulkhead::builder(1)
            .reject_when_full()
            .runtime(ModelClock::default())
            .keyed()
            .max_keys(1)
            .build::<u8>()
            .unwrap();
        let held = bulkheads.try_acquire(&1).unwrap();
        let releaser = loom::thread::spawn(move || drop(held));
        let newcomer = bulkheads.try_acquire(&2);
        releaser.join().unwrap();
        match newcomer {
            Ok(permit) => {
                assert_eq!(bulkheads.in_flight(&2), 1);
                assert_eq!(bulkheads.get(&1).map(|b| b.in_flight()), None);
                drop(permit);
            }
            Err(refused) => {
                assert_eq!(refused, tidewall::Rejected::KeysFull { retry_after: None });
                assert_eq!(bulkheads.in_flight(&1), 0, "key 1 kept, its slot back");
            }
        }
        assert_eq!(bulkheads.len(), 1);
    });
}

fn shedding_limiter(
    limit: u32,
    queue: usize,
) -> tidewall::adaptive::AdaptiveLimiter<FixedLimit, ModelClock> {
    tidewall::adaptive::AdaptiveLimiter::builder(FixedLimit(limit))
        .share(tidewall::adaptive::Priority::Sheddable, 0.5)
        .max_queue(queue)
        .max_wait(None)
        .runtime(ModelClock::default())
        .build()
        .unwrap()
}

/// Releases racing a sheddable waiter that is enqueueing, with a limit of 2 and a sheddable
/// share of one slot: the waiter is admitted once both are back (a lost wake-up, or a grant
/// that ignored its share, would deadlock or over-admit, which the model reports).
#[test]
fn releases_always_reach_a_sheddable_waiter_within_its_share() {
    use tidewall::admission::{Admission, Wait};
    loom::model(|| {
        let limiter = shedding_limiter(2, 2);
        let a = limiter.try_acquire().unwrap();
        let b = limiter.try_acquire().unwrap();
        let waiter = {
            let sheddable = limiter.with_priority(tidewall::adaptive::Priority::Sheddable);
            loom::thread::spawn(move || {
                let permit = loom::future::block_on(
                    sheddable.admit(Wait::Until(tidewall::Deadline::none())),
                )
                .unwrap();
                let held = sheddable.in_flight();
                drop(permit);
                held
            })
        };
        drop(a);
        drop(b);
        assert_eq!(
            waiter.join().unwrap(),
            1,
            "admitted alone: its share is one slot"
        );
        assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
    });
}

/// A critical caller pushing a sheddable waiter out of a full queue while that waiter gives
/// up and the held slot is released: no place or slot is lost or counted twice.
#[test]
fn a_waiter_shed_while_it_gives_up_loses_nothing() {
    use tidewall::adaptive::Priority;
    use tidewall::admission::{Admission, Wait};
    loom::model(|| {
        let limiter = shedding_limiter(1, 1);
        let held = limiter.try_acquire().unwrap();
        let waker = futures_util::task::noop_waker();
        let mut shed = Box::pin(
            limiter
                .with_priority(Priority::Sheddable)
                .admit(Wait::Until(tidewall::Deadline::none())),
        );
        assert!(
            shed.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        let critical = {
            let critical = limiter.with_priority(Priority::Critical);
            loom::thread::spawn(move || {
                let waker = futures_util::task::noop_waker();
                let mut admit = Box::pin(critical.admit(Wait::Until(tidewall::Deadline::none())));
                let polled = admit.as_mut().poll(&mut Context::from_waker(&waker));
                drop(polled);
            })
        };
        let giving_up = loom::thread::spawn(move || drop(shed));
        drop(held);
        critical.join().unwrap();
        giving_up.join().unwrap();
        assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
        assert!(limiter.try_acquire().is_ok());
    });
}

/// A call AIMD learns from racing one that its update makes steady (an AIMD limit of 4: the
/// second slot's success grows it, unless the third's success grew it to 5 first, when the
/// second's finds under half in use and ends without the lock). Whichever ends first, the
/// limit is one the two updates made one after the other: 5 (the third first) or 6.
#[test]
fn a_steady_call_skips_only_an_update_that_would_change_nothing() {
    use tidewall::adaptive::{AdaptiveLimiter, Aimd};
    loom::model(|| {
        let aimd = Aimd::builder()
            .min_limit(1)
            .initial_limit(4)
            .max_limit(8)
            .build()
            .unwrap();
        let limiter = AdaptiveLimiter::builder(aimd)
            .runtime(ModelClock::default())
            .build()
            .unwrap();
        let first = limiter.try_acquire().unwrap();
        let second = limiter.try_acquire().unwrap();
        let third = limiter.try_acquire().unwrap();
        let grows = loom::thread::spawn(move || third.success());
        second.success();
        grows.join().unwrap();
        first.ignore();
        let limit = limiter.limit();
        assert!(limit == 5 || limit == 6, "limit {limit}");
        assert_eq!(limiter.in_flight(), 0);
        // The answer published last is the limit's: a call at half of it still grows it.
        let held: Vec<_> = (0..limit.div_ceil(2))
            .map(|_| limiter.try_acquire().unwrap())
            .collect();
        held.into_iter().next_back().unwrap().success();
        assert_eq!(limiter.limit(), limit + 1);
    });
}
