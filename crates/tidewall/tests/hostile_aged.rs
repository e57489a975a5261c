//! Hostile age tests, written from the rustdoc alone: every policy with a clock, exercised
//! after living for 2.5 s, an hour, 30 days and 100 years of virtual time, and with idle gaps
//! of those lengths between uses. DESIGN §6: "Time: correct for any gap between calls, from
//! zero to centuries (no wrapping stamps)."

mod common;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use futures_util::StreamExt;
use support::{AGES, ms};
use tidewall::breaker::{CircuitBreaker, State, Window};
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::bulkhead::Bulkhead;
use tidewall::hedge::{Hedge, Idempotent};
use tidewall::rate::{KeyedRateLimiter, RateLimiter};
use tidewall::retry::{Retry, RetryError};
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::stream::{MissedTicks, interval_on};
use tidewall::task::{
    CancellationToken, Exit, Health, HealthChecker, periodic,
    pool::WorkerPool,
    supervisor::{ChildSpec, Supervisor},
};
use tidewall::testing::Clocked;
use tidewall::{Backoff, Deadline, Jitter, Rejected};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// --- breaker ------------------------------------------------------------------------------

// Docs (breaker module): "`max_half_open_wait` reopens a breaker whose probes hang, so it can
// never stay stuck half-open." and "Any age: a breaker behaves the same an hour, a month or a
// century after it was built, and after any idle gap".
async fn half_open_wait_reopens_at_any_age<R: Runtime>(rt: Clocked<R>) {
    for age in AGES {
        let b = CircuitBreaker::builder()
            .consecutive_failures(1)
            .break_duration(secs(1))
            .half_open_probes(1)
            .max_half_open_wait(Some(secs(2)))
            .runtime(rt.clone())
            .build()
            .unwrap();
        rt.clock().advance(age);
        b.try_acquire().unwrap().failure();
        assert_eq!(b.state(), State::Open, "age {age:?}");
        rt.clock().advance(ms(999));
        assert!(
            b.try_acquire().is_err(),
            "age {age:?}: open for its whole break"
        );
        rt.clock().advance(ms(1));
        let hung = b
            .try_acquire()
            .unwrap_or_else(|e| panic!("age {age:?}: probe: {e}"));
        assert!(hung.is_probe());
        assert!(b.try_acquire().is_err(), "age {age:?}: one probe only");
        rt.clock().advance(secs(2) + ms(1));
        // The probe hung past max_half_open_wait: the breaker reopens (for a break).
        assert!(b.try_acquire().is_err(), "age {age:?}");
        rt.clock().advance(secs(1) + ms(1));
        let probe = b.try_acquire().unwrap_or_else(|e| {
            panic!(
                "age {age:?}: stuck after a hung probe: {e}, {:?}",
                b.state()
            )
        });
        probe.success();
        drop(hung);
        assert_eq!(b.state(), State::Closed, "age {age:?}");
    }
}

#[test]
fn a_hung_probe_never_sticks_a_breaker_half_open_at_any_age_on_every_runtime() {
    on_every_runtime!(half_open_wait_reopens_at_any_age);
}

// Docs (`slow_call_rate`): "Trip when at least `rate` ... of the window's calls took
// `threshold` or longer." + "Any age".
async fn slow_call_rate_trips_at_any_age<R: Runtime>(rt: Clocked<R>) {
    for age in AGES {
        let b = CircuitBreaker::builder()
            .no_failure_rate()
            .slow_call_rate(0.5, ms(100))
            .minimum_calls(4)
            .window(Window::Count { calls: 10 })
            .break_duration(secs(5))
            .runtime(rt.clone())
            .build()
            .unwrap();
        rt.clock().advance(age);
        // Fast calls never trip it.
        for _ in 0..8 {
            let r = b
                .call(|| {
                    let rt = rt.clone();
                    async move {
                        rt.sleep(ms(50)).await;
                        Ok::<_, ()>(())
                    }
                })
                .await;
            assert_eq!(r, Ok(()), "age {age:?}");
        }
        assert_eq!(b.counts().slow, 0, "age {age:?}: 50 ms calls counted slow");
        for i in 0..8 {
            let r = b
                .call(|| {
                    let rt = rt.clone();
                    async move {
                        rt.sleep(ms(150)).await;
                        Ok::<_, ()>(())
                    }
                })
                .await;
            if r.is_err() {
                assert!(i >= 3, "age {age:?}: open after {i} slow calls");
                break;
            }
        }
        assert_eq!(
            b.state(),
            State::Open,
            "age {age:?}: slow calls tripped it ({:?})",
            b.counts()
        );
        rt.sleep(ms(4_900)).await;
        assert!(
            b.try_acquire().is_err(),
            "age {age:?}: open for the whole break"
        );
        rt.sleep(ms(100)).await;
        assert!(
            b.try_acquire().is_ok(),
            "age {age:?}: probe after the break"
        );
    }
}

#[test]
fn a_slow_call_rate_breaker_trips_and_breaks_fully_at_any_age_on_every_runtime() {
    on_every_runtime!(slow_call_rate_trips_at_any_age);
}

// Docs (`break_backoff`): "the k-th trip in a row (without a successful close in between)
// stays open for the k-th delay of `backoff`" + "repeated trips cost one backoff step each".
async fn break_backoff_at_any_age<R: Runtime>(rt: Clocked<R>) {
    for age in AGES {
        let b = CircuitBreaker::builder()
            .consecutive_failures(1)
            .break_backoff(
                Backoff::exponential(secs(1))
                    .jitter(Jitter::None)
                    .max_delay(secs(8))
                    .max_attempts(20)
                    .build()
                    .unwrap(),
            )
            .runtime(rt.clone())
            .build()
            .unwrap();
        rt.clock().advance(age);
        b.try_acquire().unwrap().failure();
        for expected in [1u64, 2, 4, 8, 8] {
            rt.clock().advance(ms(expected * 1_000 - 1));
            assert!(
                b.try_acquire().is_err(),
                "age {age:?}: a break of {expected} s ended early"
            );
            rt.clock().advance(ms(1));
            let probe = b
                .try_acquire()
                .unwrap_or_else(|e| panic!("age {age:?}: no probe after {expected} s: {e}"));
            probe.failure();
        }
    }
}

#[test]
fn break_backoff_grows_one_step_per_trip_at_any_age_on_every_runtime() {
    on_every_runtime!(break_backoff_at_any_age);
}

// Docs (breaker module): "a time window's stale buckets never count again" after any idle gap.
async fn time_window_forgets_across_gaps<R: Runtime>(rt: Clocked<R>) {
    let b = CircuitBreaker::builder()
        .failure_rate(0.5)
        .minimum_calls(6)
        .window(Window::Time {
            span: secs(10),
            buckets: 10,
        })
        .runtime(rt.clone())
        .build()
        .unwrap();
    for gap in AGES {
        for _ in 0..5 {
            b.try_acquire().unwrap().failure();
        }
        assert_eq!(b.state(), State::Closed);
        rt.clock().advance(gap + secs(10));
        b.try_acquire().unwrap().failure();
        b.try_acquire().unwrap().success();
        b.try_acquire().unwrap().success();
        let c = b.counts();
        assert_eq!(
            (c.calls, c.failures),
            (3, 1),
            "gap {gap:?}: stale counts came back"
        );
        for _ in 0..3 {
            b.try_acquire().unwrap().success();
        }
        assert_eq!(
            b.state(),
            State::Closed,
            "gap {gap:?}: 1 failure in 6 calls"
        );
        rt.clock().advance(gap + secs(10));
    }
}

#[test]
fn a_time_window_breaker_forgets_across_idle_gaps_of_any_length_on_every_runtime() {
    on_every_runtime!(time_window_forgets_across_gaps);
}

// --- bulkhead -----------------------------------------------------------------------------

// Docs (bulkhead module): "waits in a bounded first-in-first-out queue for at most
// `max_wait`" + DESIGN "Time: correct for any gap".
async fn bulkhead_max_wait_after_gaps<R: Runtime>(rt: Clocked<R>) {
    let b = Bulkhead::builder(1)
        .max_queue(2)
        .max_wait(ms(100))
        .runtime(rt.clone())
        .build()
        .unwrap();
    for gap in AGES {
        rt.clock().advance(gap);
        let held = b.try_acquire_owned().unwrap();
        let start = rt.now();
        assert_eq!(
            b.acquire().await.map(drop),
            Err(Rejected::BulkheadFull),
            "gap {gap:?}"
        );
        assert_eq!(
            rt.now() - start,
            ms(100),
            "gap {gap:?}: waited exactly max_wait"
        );
        let release = rt.spawn({
            let rt = rt.clone();
            async move {
                rt.sleep(ms(40)).await;
                drop(held);
            }
        });
        let p = b.acquire().await.unwrap();
        assert_eq!(
            rt.now() - start,
            ms(140),
            "gap {gap:?}: the slot came at once"
        );
        drop(p);
        drop(release);
        support::assert_conserved(&b);
    }
}

#[test]
fn bulkhead_waits_are_exact_after_idle_gaps_of_any_length_on_every_runtime() {
    on_every_runtime!(bulkhead_max_wait_after_gaps);
}

// --- rate limiters ------------------------------------------------------------------------

// Docs (rate module): "a limiter that has been idle long enough admits `burst` cells at once,
// then one cell every `period / count`"; (`until_n_ready_before`): "`DeadlineExceeded` as
// soon as the wait is known to end past the deadline".
async fn direct_limiter_after_gaps<R: Runtime>(rt: Clocked<R>) {
    let l = RateLimiter::builder(10, secs(1))
        .burst(3)
        .jitter(Duration::ZERO)
        .runtime(rt.clone())
        .build()
        .unwrap();
    for gap in AGES {
        rt.clock().advance(gap);
        for i in 0..3 {
            assert_eq!(l.check(), Ok(()), "gap {gap:?}: cell {i} of the burst");
        }
        assert_eq!(
            l.check(),
            Err(Rejected::RateLimited {
                retry_after: ms(100)
            }),
            "gap {gap:?}"
        );
        let t = rt.now();
        assert_eq!(
            l.until_ready_before(Deadline::after(&rt, ms(50))).await,
            Err(Rejected::DeadlineExceeded)
        );
        assert_eq!(rt.now(), t, "gap {gap:?}: gave up at once");
        assert_eq!(l.until_ready().await, Ok(()));
        assert_eq!(rt.now() - t, ms(100), "gap {gap:?}");
        assert!(l.check().is_err());
        assert_eq!(
            l.check_n(4),
            Err(Rejected::InsufficientCapacity { burst: 3 })
        );
    }
}

#[test]
fn a_direct_limiter_admits_exactly_its_burst_after_idle_gaps_of_any_length_on_every_runtime() {
    on_every_runtime!(direct_limiter_after_gaps);
}

// Docs (`KeyedRateLimiter`): "A key whose state is fully rested ... is indistinguishable from
// a key never seen, so such keys are evicted ... by `retain_recent`"; "the limiter never
// forgets a key early (which would hand out an extra burst)".
async fn keyed_limiter_after_gaps<R: Runtime>(rt: Clocked<R>) {
    let l = KeyedRateLimiter::builder(1, secs(1))
        .burst(1)
        .max_keys(10_000)
        .runtime(rt.clone())
        .build::<u64>()
        .unwrap();
    for gap in AGES {
        rt.clock().advance(gap);
        for k in 0..100u64 {
            assert_eq!(l.check_key(&k), Ok(()), "gap {gap:?} key {k}");
            assert!(
                matches!(l.check_key(&k), Err(Rejected::RateLimited { retry_after }) if retry_after <= secs(1) && retry_after > Duration::ZERO),
                "gap {gap:?} key {k}: a second cell at once"
            );
        }
        // Nothing rested yet: nothing may be forgotten.
        assert_eq!(
            l.retain_recent(),
            0,
            "gap {gap:?}: forgot keys that had not rested"
        );
        assert_eq!(l.len(), 100);
        rt.clock().advance(ms(999));
        assert_eq!(l.retain_recent(), 0, "gap {gap:?}");
        assert!(
            l.check_key(&7).is_err(),
            "gap {gap:?}: key 7 before it rested"
        );
        rt.clock().advance(ms(1));
        assert_eq!(l.retain_recent(), 100, "gap {gap:?}: every key rested");
        assert!(l.is_empty());
    }
}

#[test]
fn a_keyed_limiter_evicts_exactly_the_rested_keys_after_gaps_of_any_length_on_every_runtime() {
    on_every_runtime!(keyed_limiter_after_gaps);
}

// --- retry budget, hedge, retry -----------------------------------------------------------

// Docs (budget module): "retries add at most `ratio` of the calls of the last `window` (plus a
// floor of `min_per_second`, so a quiet service can still retry)"; (`RetryBudget`) "Right at
// any age: a budget built long before its first use, or idle for any time between uses,
// counts exactly the calls and retries of its last window."
async fn budget_floor_and_ratio_at_any_age<R: Runtime>(rt: Clocked<R>) {
    let floor = RetryBudgetPolicy::builder()
        .ratio(0.0)
        .min_per_second(5)
        .window(secs(1))
        .buckets(10)
        .build()
        .unwrap();
    let ratio = RetryBudgetPolicy::builder()
        .ratio(0.5)
        .min_per_second(0)
        .window(secs(1))
        .buckets(10)
        .build()
        .unwrap();
    let a = RetryBudget::new(floor, rt.now());
    let b = RetryBudget::new(ratio, rt.now());
    for gap in AGES {
        rt.clock().advance(gap);
        let now = rt.now();
        let granted = (0..20).filter(|_| a.try_withdraw(now)).count();
        assert_eq!(granted, 5, "gap {gap:?}: the floor of a quiet service");
        for _ in 0..10 {
            b.deposit(now);
        }
        let granted = (0..20).filter(|_| b.try_withdraw(now)).count();
        assert_eq!(granted, 5, "gap {gap:?}: half of 10 calls");
        assert!(!b.has_balance(now));
    }
}

#[test]
fn a_retry_budget_floor_and_ratio_hold_after_gaps_of_any_length_on_every_runtime() {
    on_every_runtime!(budget_floor_and_ratio_at_any_age);
}

/// One hedged call whose first copy takes 1 s and whose later copies answer in 10 ms; returns the
/// copies started and the time taken.
async fn hedged_call<R: Runtime>(rt: &Clocked<R>, hedge: &Hedge<Clocked<R>>) -> (u32, Duration) {
    let copies = AtomicU32::new(0);
    let start = rt.now();
    let r = hedge
        .call(Idempotent(|| {
            let n = copies.fetch_add(1, SeqCst) + 1;
            let rt = rt.clone();
            async move {
                rt.sleep(if n == 1 { secs(1) } else { ms(10) }).await;
                Ok::<_, ()>(n)
            }
        }))
        .await;
    assert!(r.is_ok());
    (copies.load(SeqCst), rt.now() - start)
}

// Docs (hedge module): "if the primary attempt has not answered after the hedge delay, a hedge
// starts alongside it"; "Hedges may add at most `ratio` of the calls ... over a 10 s window"
// (the `RetryBudget` accounting, "Right at any age").
async fn hedge_at_any_age<R: Runtime>(rt: Clocked<R>) {
    for age in AGES {
        let fixed = Hedge::builder()
            .delay(ms(50))
            .max_hedges(1)
            .runtime(rt.clone())
            .build()
            .unwrap();
        rt.clock().advance(age);
        assert_eq!(hedged_call(&rt, &fixed).await, (2, ms(60)), "age {age:?}");

        let budgeted = Hedge::builder()
            .delay(ms(50))
            .max_hedges(1)
            .budget_ratio(0.5)
            .runtime(rt.clone())
            .build()
            .unwrap();
        rt.clock().advance(age);
        let mut first = 0;
        for _ in 0..10 {
            first += hedged_call(&rt, &budgeted).await.0 - 1;
        }
        assert!(first > 0, "age {age:?}: a budgeted hedge never hedged");
        rt.clock().advance(age + secs(11));
        let mut second = 0;
        for _ in 0..10 {
            second += hedged_call(&rt, &budgeted).await.0 - 1;
        }
        assert_eq!(
            first, second,
            "age {age:?}: hedges granted after an idle gap"
        );
    }
}

#[test]
fn hedges_fire_on_time_and_budgets_refill_at_any_age_on_every_runtime() {
    on_every_runtime!(hedge_at_any_age);
}

// Docs (hedge): "a latency percentile ... from a streaming estimate of this hedge's own
// successful attempts, with a fixed fallback until enough samples exist."
async fn percentile_hedge_at_any_age<R: Runtime>(rt: Clocked<R>) {
    for age in AGES {
        let h = Hedge::builder()
            .delay(secs(1))
            .percentile(0.5, 20)
            .max_hedges(1)
            .runtime(rt.clone())
            .build()
            .unwrap();
        rt.clock().advance(age);
        assert_eq!(
            h.delay(),
            secs(1),
            "age {age:?}: the fallback before samples"
        );
        for _ in 0..40 {
            let r = h
                .call(Idempotent(|| {
                    let rt = rt.clone();
                    async move {
                        rt.sleep(ms(100)).await;
                        Ok::<_, ()>(())
                    }
                }))
                .await;
            assert!(r.is_ok());
        }
        let d = h.delay();
        assert!(
            d >= ms(100) && d <= ms(113),
            "age {age:?}: p50 of 100 ms latencies estimated as {d:?}"
        );
        rt.clock().advance(age);
        let d = h.delay();
        assert!(
            d >= ms(100) && d <= ms(113),
            "age {age:?}, then idle: {d:?}"
        );
    }
}

#[test]
fn a_percentile_hedge_delay_follows_latencies_at_any_age_on_every_runtime() {
    on_every_runtime!(percentile_hedge_at_any_age);
}

// Docs (retry module): "One `Deadline` bounds the whole operation ... a backoff sleep that
// would end past it is not slept at all, and the driver returns
// `RetryError::DeadlineExceeded` at once with the last error attached".
async fn retry_deadline_at_any_age<R: Runtime>(rt: Clocked<R>) {
    let run = |rt: Clocked<R>| async move {
        let start = rt.now();
        let r = Retry::new(
            Backoff::constant(ms(100))
                .jitter(Jitter::None)
                .max_attempts(100)
                .build()
                .unwrap(),
            || {
                let rt = rt.clone();
                async move {
                    rt.sleep(ms(30)).await;
                    Err::<(), _>("down")
                }
            },
        )
        .runtime(rt.clone())
        .attempt_timeout(ms(500))
        .deadline(Deadline::after(&rt, secs(1)))
        .await;
        (r, rt.now() - start)
    };
    let fresh = run(rt.clone()).await;
    assert!(
        matches!(fresh.0, Err(RetryError::DeadlineExceeded { .. })),
        "{fresh:?}"
    );
    assert!(fresh.1 <= secs(1));
    for age in AGES {
        rt.clock().advance(age);
        assert_eq!(run(rt.clone()).await, fresh, "age {age:?}");
    }
}

#[test]
fn a_retry_deadline_behaves_the_same_at_any_age_on_every_runtime() {
    on_every_runtime!(retry_deadline_at_any_age);
}

// Docs (`Pipeline`): one deadline, retries, breaker and bulkhead — a pipeline built long ago
// and idle for any time behaves as a fresh one.
async fn pipeline_at_any_age<R: Runtime>(rt: Clocked<R>) {
    use tidewall::pipeline::Pipeline;
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(3)
        .break_duration(secs(2))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let p = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(secs(1))
        .bulkhead(Bulkhead::builder(2).runtime(rt.clone()).build().unwrap())
        .retry(
            Backoff::constant(ms(100))
                .jitter(Jitter::None)
                .max_attempts(5)
                .build()
                .unwrap(),
        )
        .breaker(breaker.clone())
        .attempt_timeout(ms(50))
        .build()
        .unwrap();
    for gap in AGES {
        rt.clock().advance(gap);
        let calls = AtomicUsize::new(0);
        let start = rt.now();
        let r = p
            .call(|| {
                calls.fetch_add(1, SeqCst);
                async { Err::<(), _>("down") }
            })
            .await;
        // Three failures open the breaker; the 4th attempt sees CircuitOpen (2 s), which cannot
        // be waited out within the deadline.
        assert_eq!(calls.load(SeqCst), 3, "gap {gap:?}: {r:?}");
        assert!(rt.now() - start <= secs(1));
        assert_eq!(breaker.state(), State::Open, "gap {gap:?}");
        // Opened by the third failure, 200 ms into the call.
        rt.clock().advance_to(start + ms(200) + ms(1_999));
        assert!(
            matches!(
                breaker.try_acquire().map(drop),
                Err(Rejected::CircuitOpen { .. })
            ),
            "gap {gap:?}: open for its whole break"
        );
        rt.clock().advance(secs(2));
        assert_eq!(
            p.call(|| async { Ok::<_, ()>(()) }).await,
            Ok(()),
            "gap {gap:?}"
        );
        assert_eq!(breaker.state(), State::Closed);
    }
}

#[test]
fn a_pipeline_behaves_the_same_after_idle_gaps_of_any_length_on_every_runtime() {
    on_every_runtime!(pipeline_at_any_age);
}

// --- task patterns ------------------------------------------------------------------------

// Docs (`SupervisorBuilder::intensity`): "At most `max_restarts` restarts within any `period`
// (3 in 5 s by default); the next one fails the supervisor".
async fn supervisor_intensity_at_any_age<R: Runtime>(rt: Clocked<R>) {
    for age in AGES {
        // A child that fails every 6 s never exceeds 2 restarts in 5 s.
        let starts = Arc::new(AtomicU32::new(0));
        let stop = CancellationToken::new();
        let (counter, stopper, clock) = (starts.clone(), stop.clone(), rt.clone());
        let sup = Supervisor::builder()
            .runtime(rt.clone())
            .intensity(2, secs(5))
            .backoff(
                Backoff::constant(ms(10))
                    .jitter(Jitter::None)
                    .build()
                    .unwrap(),
            )
            .seed(1)
            .child(ChildSpec::new("slow-fail", move |_stop| {
                let n = counter.fetch_add(1, SeqCst) + 1;
                let (stopper, clock) = (stopper.clone(), clock.clone());
                async move {
                    clock.sleep(secs(6)).await;
                    if n == 8 {
                        stopper.cancel("enough");
                    }
                    Err::<(), _>("crash")
                }
            }))
            .build()
            .unwrap();
        rt.clock().advance(age);
        let report = sup.run(stop).await;
        assert!(report.is_ok(), "age {age:?}: escalated: {report:?}");
        assert!(starts.load(SeqCst) >= 8);

        // A child failing at once escalates after exactly 2 restarts, at any age.
        let starts = Arc::new(AtomicU32::new(0));
        let counter = starts.clone();
        let sup = Supervisor::builder()
            .runtime(rt.clone())
            .intensity(2, secs(5))
            .seed(2)
            .child(ChildSpec::new("fast-fail", move |_stop| {
                counter.fetch_add(1, SeqCst);
                async { Err::<(), _>("crash") }
            }))
            .build()
            .unwrap();
        rt.clock().advance(age);
        let esc = sup.run(CancellationToken::new()).await.unwrap_err();
        assert_eq!(starts.load(SeqCst), 3, "age {age:?}");
        assert_eq!(&*esc.child, "fast-fail");
    }
}

#[test]
fn supervisor_restart_intensity_holds_at_any_age_on_every_runtime() {
    on_every_runtime!(supervisor_intensity_at_any_age);
}

// Docs (`WorkerPool`): "Each job runs with an optional timeout"; "`submitted = completed +
// failed + handed back`, always".
async fn worker_pool_timeouts_at_any_age<R: Runtime>(rt: Clocked<R>) {
    let clock = rt.clone();
    let pool = WorkerPool::builder()
        .workers(2)
        .queue(8)
        .job_timeout(secs(1))
        .runtime(rt.clone())
        .start(move |d: u64| {
            let clock = clock.clone();
            async move {
                clock.sleep(ms(d)).await;
                d
            }
        })
        .unwrap();
    for gap in AGES {
        rt.clock().advance(gap);
        let start = rt.now();
        let fast = pool.submit(999).await.unwrap();
        let slow = pool.submit(1_001).await.unwrap();
        assert!(matches!(fast.await, Exit::Ok(999)), "gap {gap:?}");
        assert!(
            matches!(slow.await, Exit::Err(tidewall::time::Elapsed)),
            "gap {gap:?}"
        );
        assert_eq!(
            rt.now() - start,
            secs(1),
            "gap {gap:?}: timed out at exactly 1 s"
        );
    }
    let report = pool.shutdown(secs(1)).await;
    assert_eq!(report.submitted, 8);
    assert_eq!((report.completed, report.failed), (4, 4));
    assert!(report.handed_back.is_empty());
}

#[test]
fn worker_pool_job_timeouts_hold_after_idle_gaps_of_any_length_on_every_runtime() {
    on_every_runtime!(worker_pool_timeouts_at_any_age);
}

// Docs (`MissedTicks::Skip`): "Deliver one tick now (the earliest missed point) and drop the
// other missed ones; the next tick is the first point of the original schedule after the
// late one was delivered, however long the stall". `Delay`: "Deliver one tick now and restart
// the schedule from it". `Burst`: "Deliver every missed tick at once".
async fn interval_at_any_age<R: Runtime>(rt: Clocked<R>) {
    for age in AGES {
        rt.clock().advance(age);
        for period in [ms(1), secs(1)] {
            let start = rt.now();
            let mut ticks = interval_on(&rt, period, MissedTicks::Skip).unwrap();
            assert_eq!(ticks.next().await, Some(start + period), "age {age:?}");
            // The consumer stalls for `age` plus a third of a period.
            rt.clock().advance(age + period / 3);
            let stalled_at = rt.now();
            assert_eq!(
                ticks.next().await,
                Some(start + 2 * period),
                "age {age:?}: late tick"
            );
            let since = stalled_at - start;
            let k = since.as_nanos() / period.as_nanos() + 1;
            let next = start + Duration::from_nanos(u64::try_from(k * period.as_nanos()).unwrap());
            assert_eq!(
                ticks.next().await,
                Some(next),
                "age {age:?} period {period:?}"
            );
            assert_eq!(ticks.next().await, Some(next + period));
        }
        let start = rt.now();
        let mut ticks = interval_on(&rt, secs(1), MissedTicks::Delay).unwrap();
        assert_eq!(ticks.next().await, Some(start + secs(1)));
        rt.clock().advance(age);
        let late = rt.now();
        assert_eq!(ticks.next().await, Some(start + secs(2)), "age {age:?}");
        assert_eq!(
            ticks.next().await,
            Some(late + secs(1)),
            "age {age:?}: restarted from now"
        );

        let start = rt.now();
        let mut ticks = interval_on(&rt, ms(100), MissedTicks::Burst).unwrap();
        rt.clock().advance(ms(1_050));
        let mut got = Vec::new();
        for _ in 0..11 {
            got.push(ticks.next().await.unwrap());
        }
        let want: Vec<_> = (1..=11).map(|k| start + ms(100 * k)).collect();
        assert_eq!(
            got, want,
            "age {age:?}: every missed tick, then the schedule"
        );
    }
}

#[test]
fn intervals_keep_their_schedule_after_stalls_of_any_length_on_every_runtime() {
    on_every_runtime!(interval_at_any_age);
}

// Docs (`periodic`): "`Skip`: the next run starts at once, late, for the earliest tick it
// overran; the other overrun ticks are dropped, and runs return to the original schedule at
// its first point after the late run started. An overrun of any length behaves so, from one
// period to centuries."
async fn periodic_skip_at_any_age<R: Runtime>(rt: Clocked<R>) {
    for age in AGES {
        rt.clock().advance(age);
        let token = CancellationToken::new();
        let stop = token.clone();
        let period = ms(10);
        let mut runs: Vec<(std::time::Instant, std::time::Instant)> = Vec::new();
        let clock = rt.clone();
        let start = rt.now();
        let reason = periodic(rt.clone(), period, MissedTicks::Skip, &token, |tick| {
            runs.push((tick, clock.now()));
            let n = runs.len();
            if n == 5 {
                stop.cancel("done");
            }
            let clock = clock.clone();
            async move {
                if n == 2 {
                    // This run overruns by `age` (sleep_until: `Clock::sleep` caps long
                    // sleeps, see the test of that below).
                    clock.sleep_until(clock.now() + age).await;
                }
            }
        })
        .unwrap()
        .await;
        assert_eq!(reason.as_str(), "done");
        assert_eq!(runs[0], (start + period, start + period), "age {age:?}");
        assert_eq!(runs[1].0, start + 2 * period);
        let overran_until = start + 2 * period + age;
        assert_eq!(
            runs[2],
            (start + 3 * period, overran_until),
            "age {age:?}: one late run at once"
        );
        let since = (overran_until - start).as_nanos();
        let k = since / period.as_nanos() + 1;
        let next = start + Duration::from_nanos(u64::try_from(k * period.as_nanos()).unwrap());
        assert_eq!(runs[3], (next, next), "age {age:?}: back on the schedule");
        assert_eq!(runs[4], (next + period, next + period), "age {age:?}");
    }
}

#[test]
fn periodic_skip_returns_to_its_schedule_after_overruns_of_any_length_on_every_runtime() {
    on_every_runtime!(periodic_skip_at_any_age);
}

// Docs (`HealthChecker`): "the first probe starts as soon as the checker's future is first
// polled ...; later probes start at `first + k × period`. ... Each finished probe publishes its
// verdict with the instant it finished".
async fn health_checker_at_any_age<R: Runtime>(rt: Clocked<R>) {
    for age in AGES {
        let token = CancellationToken::new();
        let probes = Arc::new(AtomicU32::new(0));
        let (p, clock) = (probes.clone(), rt.clone());
        let (health, checker) = HealthChecker::builder()
            .period(secs(5))
            .timeout(secs(1))
            .runtime(rt.clone())
            .start(&token, move || {
                let n = p.fetch_add(1, SeqCst) + 1;
                let clock = clock.clone();
                async move {
                    match n {
                        2 => Err("db down".to_owned()),
                        3 => {
                            clock.sleep(secs(3)).await;
                            Ok(())
                        }
                        _ => Ok(()),
                    }
                }
            })
            .unwrap();
        rt.clock().advance(age);
        let first = rt.now();
        let run = rt.spawn(checker);
        assert_eq!(
            health.changed(&Health::Unknown).await,
            Health::Healthy,
            "age {age:?}"
        );
        assert_eq!(
            health.latest(),
            (Health::Healthy, Some(first)),
            "age {age:?}"
        );
        assert_eq!(
            health.changed(&Health::Healthy).await,
            Health::Unhealthy("db down".to_owned())
        );
        assert_eq!(health.latest().1, Some(first + secs(5)), "age {age:?}");
        assert_eq!(
            health
                .changed(&Health::Unhealthy("db down".to_owned()))
                .await,
            Health::TimedOut
        );
        assert_eq!(
            health.latest().1,
            Some(first + secs(11)),
            "age {age:?}: timed out after 1 s"
        );
        assert_eq!(health.changed(&Health::TimedOut).await, Health::Healthy);
        assert_eq!(health.latest().1, Some(first + secs(15)), "age {age:?}");
        token.cancel("bye");
        assert_eq!(run.await.unwrap().as_str(), "bye");
    }
}

#[test]
fn a_health_checker_keeps_its_schedule_at_any_age_on_every_runtime() {
    on_every_runtime!(health_checker_at_any_age);
}

// Docs (`FutureExt::timeout`) and `Deadline`: a timeout and a deadline set at any age fire at
// exactly their instant.
async fn timeouts_at_any_age<R: Runtime>(rt: Clocked<R>) {
    use tidewall::FutureExt;
    use tidewall::time::{DeadlineExceeded, Elapsed};
    for age in AGES {
        rt.clock().advance(age);
        let start = rt.now();
        let slow = rt.sleep(secs(10));
        assert_eq!(
            slow.timeout_on(&rt, ms(100)).await,
            Err(Elapsed),
            "age {age:?}"
        );
        assert_eq!(rt.now() - start, ms(100));
        let d = Deadline::after(&rt, ms(250));
        assert_eq!(
            rt.sleep(secs(10)).deadline_on(&rt, d).await,
            Err(DeadlineExceeded)
        );
        assert_eq!(rt.now() - start, ms(350), "age {age:?}");
        assert_eq!(d.remaining(rt.now()), Some(Duration::ZERO));
    }
}

#[test]
fn timeouts_and_deadlines_fire_on_time_at_any_age_on_every_runtime() {
    on_every_runtime!(timeouts_at_any_age);
}

// Docs (`Clock::sleep`): "Completes after `duration`. A duration too large to add to the
// clock sleeps 'forever' (about 30 years) instead of overflowing." A century can be added to
// the clock (`sleep_until(now + 100 years)` works), so `sleep(100 years)` must last a century;
// DESIGN §6: "Time: correct for any gap between calls, from zero to centuries".
async fn a_century_sleep_lasts_a_century<R: Runtime>(rt: Clocked<R>) {
    let century = AGES[3];
    let start = rt.now();
    let end = start
        .checked_add(century)
        .expect("a century fits in an Instant");
    rt.sleep_until(end).await;
    assert_eq!(rt.now() - start, century, "sleep_until is exact");
    let start = rt.now();
    rt.sleep(century).await;
    assert_eq!(rt.now() - start, century, "sleep(100 years) woke early");
}

#[test]
fn a_sleep_of_a_century_lasts_a_century_on_every_runtime() {
    on_every_runtime!(a_century_sleep_lasts_a_century);
}

const CENTURY: Duration = AGES[3];
const THIRTY_ONE_YEARS: Duration = Duration::from_secs(31 * 365 * 86_400);

// Docs (`break_duration`): "Stay open this long after every trip." A century fits in u64
// nanoseconds (the builder's limit, "about 584 years"), so the breaker stays open a century.
async fn a_century_break_lasts_a_century<R: Runtime>(rt: Clocked<R>) {
    let b = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(CENTURY)
        .runtime(rt.clone())
        .build()
        .unwrap();
    b.try_acquire().unwrap().failure();
    rt.clock().advance(THIRTY_ONE_YEARS);
    assert!(
        b.try_acquire().is_err(),
        "a breaker with a 100-year break admitted a call after 31 years ({:?})",
        b.state()
    );
}

#[test]
fn a_breaker_with_a_century_break_stays_open_for_it_on_every_runtime() {
    on_every_runtime!(a_century_break_lasts_a_century);
}

// Docs (`BulkheadBuilder::max_wait`): "How long a waiter may stay queued"; build refuses only
// "a `max_wait` beyond `u64` nanoseconds".
async fn a_century_max_wait_lasts_a_century<R: Runtime>(rt: Clocked<R>) {
    let b = Bulkhead::builder(1)
        .max_wait(CENTURY)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let held = b.try_acquire_owned().unwrap();
    let start = rt.now();
    let release = rt.spawn({
        let rt = rt.clone();
        async move {
            rt.sleep_until(rt.now() + THIRTY_ONE_YEARS).await;
            drop(held);
        }
    });
    let got = b.acquire().await.map(drop);
    assert_eq!(
        got,
        Ok(()),
        "a waiter allowed a century gave up after {:?}",
        rt.now() - start
    );
    assert_eq!(rt.now() - start, THIRTY_ONE_YEARS);
    release.await.unwrap();
}

#[test]
fn a_bulkhead_waiter_allowed_a_century_waits_for_it_on_every_runtime() {
    on_every_runtime!(a_century_max_wait_lasts_a_century);
}

// Docs (`Deadline::after`): "`budget` from now on `rt`'s clock (saturating far in the future
// instead of overflowing)". A century does not overflow.
async fn a_century_deadline_is_a_century<R: Runtime>(rt: Clocked<R>) {
    let d = Deadline::after(&rt, CENTURY);
    assert_eq!(d.remaining(rt.now()), Some(CENTURY));
}

#[test]
fn a_deadline_a_century_away_is_a_century_away_on_every_runtime() {
    on_every_runtime!(a_century_deadline_is_a_century);
}
