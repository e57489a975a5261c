//! Hostile black-box tests of hedging driven by the retry engine, written from the rustdoc of
//! `tidewall::hedge` and `tidewall::tower::HedgeLayer` alone: the exact virtual instant of every
//! launch (fixed delay, percentile, 1 ns, centuries), attempt counts, losers dropped, the
//! classifier's verdicts, the hedge budget paying per hedge and recovering after idle hours,
//! `max_hedges` at its extremes, and hedging through an `AdmitLayer` bulkhead while hedged
//! calls are dropped at seeded random points.

mod common;
mod support;

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::{ms, on_tokio_current_thread, on_tokio_multi_thread};
use support::{DAY, Gauge, HOUR, Rng, assert_conserved, maybe_cancel};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::{Classify, Verdict};
use tidewall::hedge::{Hedge, Idempotent};
use tidewall::rt::{Clock, Spawn, Tokio};
use tidewall::testing::Clocked;
use tidewall::tower::{AdmitLayer, AdmitMode, HedgeLayer};
use tidewall::{ConfigError, Error, Rejected};
use tower::ServiceBuilder;
use tower_service::Service;

type Rt = Clocked<Tokio>;
type Out = Result<u32, &'static str>;

/// One attempt: how long it takes, then what it answers.
#[derive(Clone, Copy, Debug)]
struct Step(Duration, Out);

fn ok(after: Duration, v: u32) -> Step {
    Step(after, Ok(v))
}
fn err(after: Duration, e: &'static str) -> Step {
    Step(after, Err(e))
}
/// An attempt that answers only after a century (never, for these tests).
fn hang() -> Step {
    Step(36_500 * DAY, Err("hung"))
}

/// Records every attempt: when it started (since `origin`), how many were dropped before they
/// answered, and how many run now.
#[derive(Clone)]
struct Log {
    rt: Rt,
    origin: Arc<Mutex<Instant>>,
    starts: Arc<Mutex<Vec<Duration>>>,
    dropped: Arc<AtomicUsize>,
    running: Gauge,
}

struct Unfinished(Arc<AtomicUsize>, bool);
impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, SeqCst);
        }
    }
}

type Attempt = Pin<Box<dyn Future<Output = Out> + Send>>;

impl Log {
    fn new(rt: &Rt) -> Self {
        Self {
            rt: rt.clone(),
            origin: Arc::new(Mutex::new(rt.now())),
            starts: Arc::default(),
            dropped: Arc::default(),
            running: Gauge::default(),
        }
    }
    /// Forgets earlier calls; instants count from now.
    fn reset(&self) {
        *self.origin.lock().unwrap() = self.rt.now();
        self.starts.lock().unwrap().clear();
        self.dropped.store(0, SeqCst);
    }
    fn starts(&self) -> Vec<Duration> {
        self.starts.lock().unwrap().clone()
    }
    fn dropped(&self) -> usize {
        self.dropped.load(SeqCst)
    }
    fn elapsed(&self) -> Duration {
        self.rt.now() - *self.origin.lock().unwrap()
    }
    fn attempt(&self, Step(after, out): Step) -> Attempt {
        let origin = *self.origin.lock().unwrap();
        self.starts.lock().unwrap().push(self.rt.now() - origin);
        let (rt, dropped, running) = (self.rt.clone(), self.dropped.clone(), self.running.enter());
        Box::pin(async move {
            let mut unfinished = Unfinished(dropped, false);
            rt.sleep(after).await;
            unfinished.1 = true;
            drop(running);
            out
        })
    }
}

/// A service (and an operation) playing `plan(n)` for its `n`-th attempt; clones share the
/// count, so a hedge sent to a clone gets the next step.
#[derive(Clone)]
struct Plan {
    log: Log,
    n: Arc<AtomicUsize>,
    plan: Arc<dyn Fn(usize) -> Step + Send + Sync>,
}

impl Plan {
    fn new(log: &Log, plan: impl Fn(usize) -> Step + Send + Sync + 'static) -> Self {
        log.reset();
        Self {
            log: log.clone(),
            n: Arc::default(),
            plan: Arc::new(plan),
        }
    }
    fn steps(log: &Log, steps: &[Step]) -> Self {
        let steps = steps.to_vec();
        Self::new(log, move |n| steps[n.min(steps.len() - 1)])
    }
    fn next(&self) -> Attempt {
        let n = self.n.fetch_add(1, SeqCst);
        self.log.attempt((self.plan)(n))
    }
}

impl Service<u32> for Plan {
    type Response = u32;
    type Error = &'static str;
    type Future = Attempt;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), &'static str>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: u32) -> Attempt {
        self.next()
    }
}

async fn hedged<K: Classify<u32, &'static str>>(hedge: &Hedge<Rt, K>, plan: &Plan) -> Out {
    hedge.call(Idempotent(|| plan.next())).await
}

fn hedge(rt: &Rt, delay: Duration, max_hedges: u32) -> Hedge<Rt> {
    budgeted(rt, delay, max_hedges, None)
}

fn budgeted(rt: &Rt, delay: Duration, max_hedges: u32, ratio: Option<f64>) -> Hedge<Rt> {
    let builder = Hedge::builder().delay(delay).max_hedges(max_hedges);
    let builder = match ratio {
        Some(ratio) => builder.budget_ratio(ratio),
        None => builder,
    };
    builder.runtime(rt.clone()).build().unwrap()
}

const Z: Duration = Duration::ZERO;

#[test]
fn hedges_launch_one_delay_apart_and_the_first_success_drops_every_loser() {
    on_tokio_current_thread(|rt: Rt| async move {
        let log = Log::new(&rt);
        let plan = Plan::steps(&log, &[hang(), hang(), hang(), ok(ms(10), 4)]);
        assert_eq!(hedged(&hedge(&rt, ms(50), 3), &plan).await, Ok(4));
        assert_eq!(log.starts(), [ms(0), ms(50), ms(100), ms(150)]);
        assert_eq!(log.elapsed(), ms(160));
        assert_eq!(log.dropped(), 3, "the three hung attempts were dropped");
        assert_eq!(log.running.now(), 0);
    });
}

#[test]
fn a_failure_beside_a_running_attempt_does_not_hurry_the_next_hedge() {
    on_tokio_current_thread(|rt: Rt| async move {
        let log = Log::new(&rt);
        let plan = Plan::steps(&log, &[hang(), err(ms(5), "h1"), ok(ms(10), 3)]);
        assert_eq!(hedged(&hedge(&rt, ms(50), 2), &plan).await, Ok(3));
        assert_eq!(log.starts(), [ms(0), ms(50), ms(100)]);
        assert_eq!(log.elapsed(), ms(110));
        assert_eq!(log.dropped(), 1);
    });
}

#[test]
fn when_every_running_attempt_failed_the_next_starts_at_once_and_the_next_waits_a_delay() {
    on_tokio_current_thread(|rt: Rt| async move {
        let log = Log::new(&rt);
        let plan = Plan::steps(&log, &[err(ms(10), "p"), hang(), ok(ms(5), 3)]);
        assert_eq!(hedged(&hedge(&rt, ms(50), 3), &plan).await, Ok(3));
        assert_eq!(
            log.starts(),
            [ms(0), ms(10), ms(60)],
            "each waits the delay"
        );
        assert_eq!(log.elapsed(), ms(65));
    });
}

#[test]
fn an_operation_failing_at_once_is_started_one_plus_n_times_and_the_last_failure_returns() {
    on_tokio_current_thread(|rt: Rt| async move {
        let log = Log::new(&rt);
        let names = ["a", "b", "c", "d", "e", "f"];
        let plan = Plan::new(&log, move |n| err(Z, names[n]));
        assert_eq!(hedged(&hedge(&rt, ms(1_000), 4), &plan).await, Err("e"));
        assert_eq!(log.starts(), [Z; 5]);

        // The last failure is the last to finish, not the last started.
        let plan = Plan::steps(&log, &[err(ms(80), "primary"), err(ms(10), "hedge")]);
        assert_eq!(hedged(&hedge(&rt, ms(50), 1), &plan).await, Err("primary"));
        assert_eq!((log.starts(), log.elapsed()), (vec![ms(0), ms(50)], ms(80)));
    });
}

/// `Ok(503)` may be hedged, "fatal" fails, "ignore" says nothing, "fine" is a success.
fn judge(r: Result<&u32, &&'static str>) -> Verdict {
    match r {
        Ok(503) => Verdict::RetryableFailure,
        Ok(_) | Err(&"fine") => Verdict::Success,
        Err(&"fatal") => Verdict::Failure,
        Err(&"ignore") => Verdict::Ignored,
        Err(_) => Verdict::RetryableFailure,
    }
}

#[test]
fn the_classifier_decides_success_wins_retryable_goes_on_anything_else_ends_the_call() {
    on_tokio_current_thread(|rt: Rt| async move {
        let judged = |max| {
            Hedge::builder()
                .delay(ms(50))
                .max_hedges(max)
                .classify(judge as fn(Result<&u32, &&'static str>) -> Verdict)
                .runtime(rt.clone())
                .build()
                .unwrap()
        };
        let log = Log::new(&rt);
        for end in ["fatal", "ignore", "fine"] {
            let plan = Plan::steps(&log, &[hang(), err(ms(5), end), ok(ms(1), 1)]);
            assert_eq!(hedged(&judged(3), &plan).await, Err(end));
            assert_eq!(log.starts(), [ms(0), ms(50)], "{end}: no hedge after it");
            assert_eq!(log.elapsed(), ms(55), "{end}: at once");
            assert_eq!(log.dropped(), 1, "{end}: the primary was dropped");
        }
        // A retryable `Ok` leaves the primary running and the next hedge on schedule.
        let plan = Plan::steps(&log, &[hang(), ok(ms(5), 503), ok(ms(20), 200)]);
        assert_eq!(hedged(&judged(2), &plan).await, Ok(200));
        assert_eq!(log.starts(), [ms(0), ms(50), ms(100)]);
        // Every attempt retryable: the last one is returned, an `Ok` still an `Ok`.
        let plan = Plan::steps(&log, &[ok(Z, 503)]);
        assert_eq!(hedged(&judged(2), &plan).await, Ok(503));
        assert_eq!(log.starts(), [Z; 3]);
    });
}

#[test]
fn max_hedges_zero_never_hedges_and_u32_max_is_a_typed_error() {
    on_tokio_current_thread(|rt: Rt| async move {
        let log = Log::new(&rt);
        let none = hedge(&rt, Duration::from_nanos(1), 0);
        let plan = Plan::steps(&log, &[err(Z, "p"), ok(Z, 1)]);
        assert_eq!(hedged(&none, &plan).await, Err("p"));
        assert_eq!(log.starts(), [Z]);
        let plan = Plan::steps(&log, &[ok(ms(100), 1)]);
        assert_eq!(hedged(&none, &plan).await, Ok(1));
        assert_eq!(log.starts(), [Z]);

        let built = Hedge::builder().max_hedges(u32::MAX).build();
        let field = match built {
            Err(ConfigError::OutOfRange { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field, "max_hedges");
        let most = Hedge::builder().max_hedges(u32::MAX - 1).build().unwrap();
        assert_eq!(most.max_hedges(), u32::MAX - 1);
        assert!(Hedge::builder().delay(Duration::MAX).build().is_err());
    });
}

#[test]
fn the_hedge_budget_pays_per_hedge_and_recovers_after_idle_hours() {
    on_tokio_current_thread(|rt: Rt| async move {
        let paying = budgeted(&rt, ms(10), 3, Some(0.1));
        let log = Log::new(&rt);
        for round in 0..3 {
            let mut hedges = 0;
            for _ in 0..100 {
                // Each call would hedge three times: at 10, 20 and 30 ms.
                let plan = Plan::steps(&log, &[ok(ms(40), 1), hang()]);
                assert_eq!(hedged(&paying, &plan).await, Ok(1));
                hedges += log.starts().len() - 1;
            }
            assert_eq!(hedges, 10, "round {round}: 10 % of 100 calls, each paid");
            rt.sleep(2 * HOUR).await;
        }
        // A zero ratio: hedges may add nothing.
        let never = budgeted(&rt, ms(10), 1, Some(0.0));
        for _ in 0..50 {
            let plan = Plan::steps(&log, &[ok(ms(40), 1), hang()]);
            assert_eq!(hedged(&never, &plan).await, Ok(1));
            assert_eq!(log.starts().len(), 1, "a zero budget never hedges");
        }
    });
}

#[test]
fn u32_max_minus_one_hedges_failing_at_once_stop_where_the_budget_does() {
    on_tokio_current_thread(|rt: Rt| async move {
        let paying = budgeted(&rt, DAY, u32::MAX - 1, Some(0.1));
        let log = Log::new(&rt);
        let start = rt.now();
        let mut attempts = 0;
        for _ in 0..100 {
            let plan = Plan::steps(&log, &[err(Z, "down")]);
            assert_eq!(hedged(&paying, &plan).await, Err("down"));
            attempts += log.starts().len();
        }
        assert_eq!(attempts, 110, "100 calls and the 10 hedges paid for");
        assert_eq!(rt.now(), start, "no time passed");

        // Without a budget the count is the only bound: 1000 failures, then a success.
        let unbounded = hedge(&rt, DAY, u32::MAX - 1);
        let plan = Plan::new(&log, |n| if n < 1_000 { err(Z, "down") } else { ok(Z, 1) });
        assert_eq!(hedged(&unbounded, &plan).await, Ok(1));
        assert_eq!(log.starts().len(), 1_001);
        assert_eq!(rt.now(), start);
    });
}

#[test]
fn a_one_nanosecond_delay_launches_each_hedge_one_nanosecond_apart() {
    on_tokio_current_thread(|rt: Rt| async move {
        let ns = Duration::from_nanos;
        let log = Log::new(&rt);
        let plan = Plan::steps(&log, &[hang(), hang(), hang(), ok(Z, 7)]);
        assert_eq!(hedged(&hedge(&rt, ns(1), 3), &plan).await, Ok(7));
        assert_eq!(log.starts(), [ns(0), ns(1), ns(2), ns(3)]);
        assert_eq!(log.elapsed(), ns(3));

        // Nearly unbounded hedges one nanosecond apart: the 1001st attempt answers.
        let plan = Plan::new(&log, |n| if n < 1_000 { hang() } else { ok(Z, 9) });
        assert_eq!(hedged(&hedge(&rt, ns(1), u32::MAX - 1), &plan).await, Ok(9));
        let expected: Vec<Duration> = (0..=1_000).map(ns).collect();
        assert_eq!(log.starts(), expected);
        assert_eq!(log.dropped(), 1_000);
        assert_eq!(log.running.now(), 0);
    });
}

#[test]
fn a_delay_of_centuries_waits_that_long_and_leaves_no_timer_behind() {
    on_tokio_current_thread(|rt: Rt| async move {
        let log = Log::new(&rt);
        let longest = Duration::from_nanos(u64::MAX);
        let far = hedge(&rt, longest, 1);
        assert_eq!(far.delay(), longest);
        let plan = Plan::steps(&log, &[ok(ms(5), 1), ok(Z, 2)]);
        assert_eq!(hedged(&far, &plan).await, Ok(1));
        assert_eq!((log.starts(), log.elapsed()), (vec![ms(0)], ms(5)));
        assert_eq!(rt.clock().pending_timers(), 0, "no timer left behind");

        let month = hedge(&rt, 30 * DAY, 1);
        let plan = Plan::steps(&log, &[ok(1_000 * DAY, 1), ok(Z, 2)]);
        assert_eq!(hedged(&month, &plan).await, Ok(2));
        assert_eq!(log.starts(), [Z, 30 * DAY]);
        assert_eq!(rt.clock().pending_timers(), 0);
    });
}

#[test]
fn a_percentile_delay_launches_at_the_estimate_and_failures_do_not_feed_it() {
    on_tokio_current_thread(|rt: Rt| async move {
        let log = Log::new(&rt);
        let estimating = Hedge::builder()
            .delay(ms(500))
            .percentile(0.9, 20)
            .max_hedges(2)
            .runtime(rt.clone())
            .build()
            .unwrap();
        for _ in 0..40 {
            let plan = Plan::steps(&log, &[err(ms(1), "fast failure")]);
            let _ = hedged(&estimating, &plan).await;
        }
        assert_eq!(estimating.delay(), ms(500), "failures are no samples");
        let twin = estimating.clone();
        for _ in 0..30 {
            let plan = Plan::steps(&log, &[ok(ms(30), 1)]);
            assert_eq!(hedged(&twin, &plan).await, Ok(1));
        }
        let d = estimating.delay();
        assert!(
            d >= ms(30) && d <= ms(34),
            "p90 of a clone's 30 ms latencies: {d:?}"
        );
        let plan = Plan::steps(&log, &[hang(), hang(), ok(Z, 9)]);
        assert_eq!(hedged(&estimating.clone(), &plan).await, Ok(9));
        assert_eq!(log.starts(), [Z, d, 2 * d], "hedged at the estimate");
    });
}

fn bulkhead(rt: &Rt, capacity: usize) -> Bulkhead<Rt> {
    Bulkhead::builder(capacity)
        .max_queue(64)
        .max_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap()
}

async fn ready_and_call<S: Service<u32>>(svc: &mut S, req: u32) -> Result<S::Response, S::Error> {
    poll_fn(|cx| svc.poll_ready(cx)).await?;
    svc.call(req).await
}

#[test]
fn hedging_through_a_bulkhead_takes_and_gives_back_one_slot_per_attempt() {
    on_tokio_current_thread(|rt: Rt| async move {
        let log = Log::new(&rt);
        let layered = |bulk: &Bulkhead<Rt>, mode, max, plan: &Plan| {
            ServiceBuilder::new()
                .layer(HedgeLayer::new(hedge(&rt, ms(50), max)))
                .layer(AdmitLayer::new(bulk.clone(), mode).runtime(rt.clone()))
                .map_err(Error::Inner as fn(&'static str) -> Error<&'static str>)
                .service(plan.clone())
        };
        // Room for both: the hedge wins, the primary's slot is back when the call returns.
        let two = bulkhead(&rt, 2);
        let plan = Plan::steps(&log, &[hang(), ok(ms(10), 2)]);
        let mut svc = layered(&two, AdmitMode::WaitReady, 1, &plan);
        assert_eq!(ready_and_call(&mut svc, 0).await, Ok(2));
        assert_eq!((log.starts(), log.elapsed()), (vec![ms(0), ms(50)], ms(60)));
        assert_eq!(two.available(), 2, "the dropped primary's slot is free");
        drop(svc);
        assert_conserved(&two);

        // One slot: the hedge waits for it in readiness; the primary answers; nothing stays
        // queued.
        let one = bulkhead(&rt, 1);
        let plan = Plan::steps(&log, &[ok(ms(100), 1), ok(Z, 2)]);
        let mut svc = layered(&one, AdmitMode::WaitReady, 1, &plan);
        assert_eq!(ready_and_call(&mut svc, 0).await, Ok(1));
        assert_eq!((log.starts(), log.elapsed()), (vec![ms(0)], ms(100)));
        assert_eq!((one.available(), one.queued()), (1, 0));
        // The hedge's clone was polled ready (it waited, it was not refused): when the
        // primary fails, the waiting hedge gets the slot and answers.
        let plan = Plan::steps(&log, &[err(ms(100), "p"), ok(Z, 2)]);
        let mut svc = layered(&one, AdmitMode::WaitReady, 1, &plan);
        assert_eq!(ready_and_call(&mut svc, 0).await, Ok(2));
        assert_eq!(
            (log.starts(), log.elapsed()),
            (vec![ms(0), ms(100)], ms(100))
        );
        drop(svc);
        assert_conserved(&one);

        // Shedding: each hedge is refused at once beside the running primary, which wins.
        let plan = Plan::steps(&log, &[ok(ms(200), 1), ok(Z, 2)]);
        let mut svc = layered(&one, AdmitMode::Reject, 3, &plan);
        assert_eq!(ready_and_call(&mut svc, 0).await, Ok(1));
        assert_eq!((log.starts(), log.elapsed()), (vec![ms(0)], ms(200)));
        // The primary fails: the next hedge starts at once and gets the freed slot.
        let plan = Plan::steps(&log, &[err(ms(20), "p"), ok(ms(5), 2)]);
        let mut svc = layered(&one, AdmitMode::Reject, 3, &plan);
        assert_eq!(ready_and_call(&mut svc, 0).await, Ok(2));
        assert_eq!(log.starts(), [ms(0), ms(20)]);
        // Every attempt refused: the last refusal is the call's error.
        let held = one.try_acquire().unwrap();
        let shed = ready_and_call(&mut svc, 0).await;
        assert_eq!(shed, Err(Error::Rejected(Rejected::BulkheadFull)));
        drop((held, svc));
        assert_conserved(&one);
    });
}

#[test]
fn hedged_calls_dropped_at_seeded_points_leave_no_attempt_or_slot_behind() {
    on_tokio_current_thread(|rt: Rt| async move {
        let mut rng = Rng::new(0x4ED6_E5EE);
        let log = Log::new(&rt);
        for mode in [AdmitMode::WaitReady, AdmitMode::WaitCall, AdmitMode::Reject] {
            let bulk = bulkhead(&rt, 3);
            for round in 0..40 {
                let draws: Vec<u64> = (0..8).map(|_| rng.next()).collect();
                let plan = Plan::new(&log, move |n| {
                    let d = draws[n % draws.len()] >> (n % 7);
                    Step(ms(d % 40), if d % 3 < 1 { Err("x") } else { Ok(1) })
                });
                let max = u32::try_from(rng.below(5)).unwrap();
                let policy = hedge(&rt, ms(1 + rng.below(20)), max);
                let svc = ServiceBuilder::new()
                    .layer(HedgeLayer::new(policy.clone()))
                    .layer(AdmitLayer::new(bulk.clone(), mode).runtime(rt.clone()))
                    .map_err(Error::Inner as fn(&'static str) -> Error<&'static str>)
                    .service(plan.clone());
                let calls = (0..6).map(|_| {
                    let (mut svc, draw, rt) = (svc.clone(), rng.next(), rt.clone());
                    async move {
                        let call = async move { ready_and_call(&mut svc, 0).await };
                        maybe_cancel(&rt, draw, call).await
                    }
                });
                futures_util::future::join_all(calls).await;
                let direct = policy.call(Idempotent(|| plan.next()));
                maybe_cancel(&rt, rng.next(), direct).await;
                let left = (log.running.now(), bulk.available(), bulk.queued());
                assert_eq!(left, (0, 3, 0), "{mode:?} round {round}");
            }
            rt.sleep(HOUR).await;
            assert_conserved(&bulk);
        }
    });
}

#[test]
fn clones_of_a_hedge_layer_share_one_budget() {
    on_tokio_current_thread(|rt: Rt| async move {
        let layer = HedgeLayer::new(budgeted(&rt, ms(10), 1, Some(0.1)));
        let log = Log::new(&rt);
        let mut hedges = 0;
        for i in 0..100 {
            let plan = Plan::steps(&log, &[ok(ms(40), 1), hang()]);
            let mut svc = tower_layer::Layer::layer(&layer.clone(), plan);
            assert_eq!(ready_and_call(&mut svc, i).await, Ok(1));
            hedges += log.starts().len() - 1;
        }
        assert_eq!(hedges, 10);
    });
}

async fn concurrent_calls(rt: Rt) {
    let paying = budgeted(&rt, ms(10), 3, Some(0.1));
    let log = Log::new(&rt);
    let plan = Plan::new(&log, |n| if n < 100 { ok(ms(40), 1) } else { hang() });
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (hedge, plan) = (paying.clone(), plan.clone());
            rt.spawn(async move { hedged(&hedge, &plan).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Ok(1));
    }
    assert_eq!(log.starts().len(), 110, "100 calls, 10 hedges");
    assert_eq!((log.elapsed(), log.running.now()), (ms(40), 0));
}

#[test]
fn concurrent_calls_on_clones_draw_exactly_the_budgets_hedges_between_them() {
    on_tokio_current_thread(concurrent_calls);
    on_tokio_multi_thread(concurrent_calls);
}

#[test]
fn schedules_summing_past_u64_nanoseconds_still_launch_every_hedge() {
    on_tokio_current_thread(|rt: Rt| async move {
        let year = 365 * DAY;
        let log = Log::new(&rt);
        let plan = Plan::steps(&log, &[ok(2_000 * year, 1), ok(2_000 * year, 2), ok(Z, 3)]);
        assert_eq!(hedged(&hedge(&rt, 300 * year, 2), &plan).await, Ok(3));
        assert_eq!(log.starts(), [Z, 300 * year, 600 * year]);

        // The longest delay there is, waited out in full.
        let longest = Duration::from_nanos(u64::MAX);
        let plan = Plan::steps(&log, &[ok(1_000 * year, 1), ok(ms(0), 2)]);
        assert_eq!(hedged(&hedge(&rt, longest, 1), &plan).await, Ok(2));
        assert_eq!(log.starts(), [Z, longest]);
        assert_eq!(rt.clock().pending_timers(), 0);
    });
}

#[test]
fn a_primary_answering_at_the_hedge_instant_is_not_hedged() {
    on_tokio_current_thread(|rt: Rt| async move {
        let log = Log::new(&rt);
        let plan = Plan::steps(&log, &[ok(ms(50), 1), ok(ms(0), 2)]);
        assert_eq!(hedged(&hedge(&rt, ms(50), 1), &plan).await, Ok(1));
        assert_eq!(log.starts(), [Z], "it had answered by the delay");
    });
}

#[test]
fn a_percentile_of_instant_successes_neither_spins_nor_breaks_the_spacing() {
    on_tokio_current_thread(|rt: Rt| async move {
        let log = Log::new(&rt);
        let estimating = Hedge::builder()
            .delay(ms(500))
            .percentile(1.0, 5)
            .max_hedges(2)
            .runtime(rt.clone())
            .build()
            .unwrap();
        for _ in 0..10 {
            let plan = Plan::steps(&log, &[ok(Z, 1)]);
            assert_eq!(hedged(&estimating, &plan).await, Ok(1));
        }
        let d = estimating.delay();
        let plan = Plan::steps(&log, &[hang(), hang(), ok(ms(1), 9)]);
        assert_eq!(hedged(&estimating, &plan).await, Ok(9));
        assert_eq!(log.starts(), [Z, d, 2 * d], "spaced by delay() = {d:?}");
    });
}

#[test]
fn a_failure_with_no_hedge_left_waits_for_the_attempts_still_running() {
    on_tokio_current_thread(|rt: Rt| async move {
        let log = Log::new(&rt);
        let plan = Plan::steps(&log, &[ok(ms(100), 1), err(ms(5), "hedge")]);
        assert_eq!(hedged(&hedge(&rt, ms(50), 1), &plan).await, Ok(1));
        let (starts, took) = (log.starts(), log.elapsed());
        assert_eq!((starts, took), (vec![ms(0), ms(50)], ms(100)));

        let plan = Plan::steps(&log, &[err(ms(60), "primary"), ok(ms(20), 2)]);
        assert_eq!(hedged(&hedge(&rt, ms(50), 1), &plan).await, Ok(2));
        assert_eq!((log.starts(), log.elapsed()), (vec![ms(0), ms(50)], ms(70)));
    });
}

// Docs (HedgeBuilder::budget_ratio): "A hedge the budget refuses is not sent ... if every
// attempt then running fails, the budget is asked once more, at once". Refused at 10 ms, the
// budget refilled by 20 calls at 50 ms, the primary failing at 100 ms: the hedge goes then.
#[test]
fn a_hedge_the_budget_refused_is_still_one_of_the_calls_hedges_once_the_budget_pays() {
    on_tokio_current_thread(|rt: Rt| async move {
        let paying = budgeted(&rt, ms(10), 1, Some(0.1));
        let (log, quick_log) = (Log::new(&rt), Log::new(&rt));
        // At 10 ms the budget (one deposit) cannot pay for the hedge.
        let plan = Plan::steps(&log, &[err(ms(100), "primary"), ok(Z, 2)]);
        let call = hedged(&paying, &plan);
        let deposits = async {
            rt.sleep(ms(50)).await;
            for _ in 0..20 {
                let quick = Plan::steps(&quick_log, &[ok(Z, 1)]);
                assert_eq!(hedged(&paying, &quick).await, Ok(1));
            }
        };
        let (out, ()) = futures_util::join!(call, deposits);
        // At 100 ms the primary failed, no hedge has started, and the budget holds 2.1.
        assert_eq!(out, Ok(2), "attempts started at {:?}", log.starts());
        assert_eq!(log.starts(), [ms(0), ms(100)]);
    });
}
