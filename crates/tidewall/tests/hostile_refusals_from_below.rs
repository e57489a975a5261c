//! Hostile black-box tests of how refusals *from below* travel up a stack, written from the
//! public docs only (rustdoc, README, CHANGELOG [Unreleased]), composed as users compose them:
//!
//! * `AdmitLayer` over a learning stage (an `AdaptiveLimiter`): "a response is a success, an
//!   error a failure (a timeout from a layer inside included), and a refusal from a layer
//!   inside (an error whose `PolicyError::rejection` is `Some`, a `DeadlineExceeded`
//!   included) is ignored"; the inner service is `Clone` (tower's clone-and-swap);
//! * `PipelineLayer`: a refusal from below "is treated as the pipeline's own breaker's
//!   refusal: not shown to the classifier, recorded as `Ignored` by its breaker, teaching its
//!   admission stages nothing (a call it ends teaches them what its last attempt that was not
//!   refused taught, if one was), retried after the refusal's `retry_after` (but for
//!   `InsufficientCapacity` ... and but for the call's last request), and counted
//!   `outcome="rejected"`";
//! * `BreakerLayer`: a refusal from below "is recorded as `Ignored` (nothing in the window)";
//! * the HTTP client (`ClientPolicies::run`, `tower::http::ClientLayer`): a refusal from a
//!   policy below the stack is counted `rejected`, heard as `Rejected`, retried per the
//!   `HttpClassifier` table, and not counted by the per-host breaker and adaptive limit;
//! * `tidewall_rejections_total`: "the policy's refusals, each time it refuses" (not the
//!   final answer).
//!
//! Stacks: an adaptive `AdmitLayer` over a `PipelineLayer` over a bulkhead `AdmitLayer` over
//! a scripted service; breakers over admission; nested breakers and nested adaptive layers;
//! the HTTP client over a send that refuses with every `Rejected` variant, and over real
//! tower policies below it. Seeded random drops of response futures with every permit and
//! slot checked back; idle gaps of days; hints past deadlines and caps. Virtual time only
//! (`Clocked` on every runtime), seeded randomness only, metrics through a local
//! `DebuggingRecorder` installed while the policies are built.

#![cfg(all(feature = "tower", feature = "http", feature = "metrics"))]

mod common;
mod support;

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use common::ms;
use common::rng::mix;
use futures_util::future::{Either, join_all, select};
use metrics_util::debugging::Snapshotter;
use support::snapshot::{Series, recorded, series_total, snapshot};
use support::{DAY, Gauge, HOUR, Rng};
use tidewall::adaptive::{AdaptiveLimiter, AdaptiveLimiterBuilder, Aimd, AnyAlgorithm};
use tidewall::breaker::{CircuitBreaker, CircuitBreakerBuilder, State};
use tidewall::bulkhead::{Bulkhead, BulkheadBuilder};
use tidewall::http::{Authority, ClientPolicies, ClientPoliciesBuilder, Overrides};
use tidewall::pipeline::{Pipeline, PipelineBuilder, RetryStage};
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime};
use tidewall::telemetry::{Event, EventKind};
use tidewall::testing::Clocked;
use tidewall::tower::http::ClientLayer;
use tidewall::tower::{AdmitLayer, AdmitMode, BreakerLayer, NoClone, PipelineLayer, TimeoutLayer};
use tidewall::{Backoff, Error, Jitter, Rejected};
use tower::{ServiceBuilder, ServiceExt as _};
use tower_layer::Layer;
use tower_service::Service;

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

type E = Error<&'static str>;
type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

const MODES: [AdmitMode; 3] = [AdmitMode::Reject, AdmitMode::WaitCall, AdmitMode::WaitReady];

/// Every `Rejected` variant, with hints that differ from the 10 ms backoff used below (one
/// longer, one shorter, none).
fn every_refusal() -> [Rejected; 9] {
    [
        Rejected::CircuitOpen {
            retry_after: ms(25),
        },
        Rejected::RateLimited { retry_after: ms(5) },
        Rejected::InsufficientCapacity { burst: 3 },
        Rejected::BulkheadFull,
        Rejected::DeadlineExceeded,
        Rejected::BudgetExhausted,
        Rejected::KeysFull { retry_after: None },
        Rejected::KeysFull {
            retry_after: Some(ms(40)),
        },
        Rejected::BackendUnavailable,
    ]
}

/// The wait a refusal asks for: its `retry_after`, or none.
fn hint_of(why: Rejected) -> Duration {
    match why {
        Rejected::CircuitOpen { retry_after } | Rejected::RateLimited { retry_after } => {
            retry_after
        }
        Rejected::KeysFull {
            retry_after: Some(after),
        } => after,
        _ => Duration::ZERO,
    }
}

fn constant(delay: Duration, attempts: u32) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

/// AIMD from `initial` (at most `max`, at least 1), halving on a drop; a call slower than
/// `timeout` is a drop.
fn aimd(initial: u32, max: u32, timeout: Duration) -> Aimd {
    Aimd::builder()
        .min_limit(1)
        .initial_limit(initial)
        .max_limit(max)
        .backoff_ratio(0.5)
        .timeout(timeout)
        .build()
        .unwrap()
}

fn learner<C: Clock>(
    rt: &C,
    name: &'static str,
    initial: u32,
    max: u32,
    timeout: Duration,
) -> AdaptiveLimiterBuilder<Aimd, C> {
    AdaptiveLimiter::builder(aimd(initial, max, timeout))
        .runtime(rt.clone())
        .name(name)
}

/// `stage` as a layer in `mode`, timing its waits on `rt`.
fn admit<A: Clone, C: Clock>(stage: &A, mode: AdmitMode, rt: &C) -> AdmitLayer<A, C> {
    AdmitLayer::new(stage.clone(), mode).runtime(rt.clone())
}

/// A breaker named `name` on `rt` that `failures` in a row open, with no failure rate.
fn breaker<C: Clock>(rt: &C, name: &'static str, failures: u32) -> CircuitBreakerBuilder<C> {
    CircuitBreaker::builder()
        .runtime(rt.clone())
        .name(name)
        .no_failure_rate()
        .consecutive_failures(failures)
}

/// A bulkhead of one slot named `name` on `rt`, queueing at most `max_queue` callers.
fn one_slot<C: Clock>(rt: &C, name: &'static str, max_queue: usize) -> BulkheadBuilder<C> {
    Bulkhead::builder(1)
        .runtime(rt.clone())
        .name(name)
        .max_queue(max_queue)
}

/// The rate limiter "pace" on `rt`: one call per 100 ms.
fn pace_limiter<C: Clock>(rt: &C) -> RateLimiter<C> {
    RateLimiter::builder(1, 100 * MS)
        .burst(1)
        .runtime(rt.clone())
        .name("pace")
        .build()
        .unwrap()
}

/// A pipeline named `name` on `rt` whose calls end by `deadline`.
fn pipeline_named<C: Clock>(rt: &C, name: &'static str, deadline: Duration) -> PipelineBuilder<C> {
    Pipeline::builder()
        .runtime(rt.clone())
        .name(name)
        .deadline(deadline)
}

type Staged<C> = PipelineBuilder<C, (), AdaptiveLimiter<Aimd, C>, RetryStage, CircuitBreaker<C>>;

/// As `pipeline_named`, with each attempt admitted by `stage`, three attempts 10 ms apart and the
/// breaker `own`.
fn staged<C: Clock>(
    rt: &C,
    name: &'static str,
    deadline: Duration,
    stage: &AdaptiveLimiter<Aimd, C>,
    own: &CircuitBreaker<C>,
) -> Staged<C> {
    pipeline_named(rt, name, deadline)
        .bulkhead(stage.clone())
        .retry(constant(10 * MS, 3))
        .breaker(own.clone())
}

// --- scripted peers: the `n`th request since the last plan (from 1) answers as planned ----

type Plan<A> = Arc<dyn Fn(u32) -> A + Send + Sync>;

/// A peer below the stack: it answers the `n`th request since its last plan (from 1) as the
/// plan says, and counts the requests running.
#[derive(Clone)]
struct Planned<R, A> {
    rt: R,
    plan: Arc<Mutex<Plan<A>>>,
    count: Arc<AtomicU32>,
    running: Gauge,
}

impl<R: Clock, A: Copy + Send + Sync + 'static> Planned<R, A> {
    fn answering(rt: &R, at_first: A) -> Self {
        Self {
            rt: rt.clone(),
            plan: Arc::new(Mutex::new(Arc::new(move |_| at_first))),
            count: Arc::default(),
            running: Gauge::default(),
        }
    }
    /// Answers by `plan` from now on, counting requests afresh.
    fn plan(&self, plan: impl Fn(u32) -> A + Send + Sync + 'static) {
        *self.plan.lock().unwrap() = Arc::new(plan);
        self.count.store(0, SeqCst);
    }
    /// Requests since the last plan.
    fn count(&self) -> u32 {
        self.count.load(SeqCst)
    }
    /// Requests running now.
    fn live(&self) -> usize {
        self.running.now()
    }
    /// Takes the next request: its answer is what `answer` makes of its number and its
    /// planned reply, after the ms `delay` reads from the reply (if any); it runs until then.
    fn next<T: Send + 'static>(
        &self,
        delay: impl FnOnce(A) -> Option<u64>,
        answer: impl FnOnce(u32, A) -> T + Send + 'static,
    ) -> BoxFut<T> {
        let n = self.count.fetch_add(1, SeqCst) + 1;
        let plan = Arc::clone(&self.plan.lock().unwrap());
        let reply = plan(n);
        let running = self.running.enter();
        let wait = delay(reply).map(|t| self.rt.sleep(ms(t)));
        Box::pin(async move {
            let _running = running;
            if let Some(wait) = wait {
                wait.await;
            }
            answer(n, reply)
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Reply {
    /// `Ok(n)` after this many ms.
    Ok(u64),
    /// `Err(Error::Inner("down"))` after this many ms.
    Fail(u64),
    /// A refusal, as a policy below would make it.
    Refuse(Rejected),
    /// A timeout, as a layer below would make it.
    TimedOut,
}

/// A scripted service: `Ok(n)` for the `n`th call unless planned otherwise.
type Script<R> = Planned<R, Reply>;

impl<R: Clock> Script<R> {
    fn new(rt: &R) -> Self {
        Self::answering(rt, Reply::Ok(0))
    }
    /// Calls since the last plan.
    fn calls(&self) -> u32 {
        self.count()
    }
}

impl<R: Clock, Req: Send + 'static> Service<Req> for Script<R> {
    type Response = u32;
    type Error = E;
    type Future = BoxFut<Result<u32, E>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Req) -> Self::Future {
        let delay = |reply| match reply {
            Reply::Ok(t) | Reply::Fail(t) if t > 0 => Some(t),
            _ => None,
        };
        self.next(delay, |n, reply| match reply {
            Reply::Ok(_) => Ok(n),
            Reply::Fail(_) => Err(Error::Inner("down")),
            Reply::Refuse(why) => Err(Error::Rejected(why)),
            Reply::TimedOut => Err(Error::TimedOut),
        })
    }
}

// --- what listeners heard ---------------------------------------------------------------------

fn kind_of(kind: &EventKind<'_>) -> String {
    match kind {
        EventKind::RetryScheduled { attempt, delay } => format!("retry {attempt} {delay:?}"),
        EventKind::Rejected(why) => format!("rejected {}", why.kind()),
        EventKind::StateChanged(change) => format!("{:?}->{:?}", change.from, change.to),
        other => format!("{other:?}"),
    }
}

/// Lines `name kind`, and the keys events carried.
#[derive(Clone, Default)]
struct Ear(Arc<Mutex<Vec<String>>>, Arc<Mutex<Vec<Option<String>>>>);

impl Ear {
    fn listener(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let (lines, keys) = (Arc::clone(&self.0), Arc::clone(&self.1));
        move |event: &Event<'_>| {
            lines
                .lock()
                .unwrap()
                .push(format!("{} {}", event.name, kind_of(&event.kind)));
            keys.lock().unwrap().push(event.key.map(str::to_owned));
        }
    }
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    fn take_keys(&self) -> Vec<Option<String>> {
        std::mem::take(&mut *self.1.lock().unwrap())
    }
}

fn lines(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// What `name`'s listener hears of a call retried twice, `delay` apart, that ends as `end`.
fn retried_twice(name: &str, delay: Duration, end: String) -> Vec<String> {
    vec![
        format!("{name} retry 1 {delay:?}"),
        format!("{name} retry 2 {delay:?}"),
        end,
    ]
}

// --- metrics: each read holds the counts since the previous one -------------------------------

struct Books {
    snapshotter: Snapshotter,
    now: Vec<Series>,
}

impl Books {
    fn new(snapshotter: Snapshotter) -> Self {
        Self {
            snapshotter,
            now: Vec::new(),
        }
    }
    /// Reads the counts since the previous read.
    fn read(&mut self) {
        self.now = snapshot(&self.snapshotter);
    }
    fn n(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        series_total(&self.now, name, labels)
    }
    fn calls(&self, policy: &str, name: &str, outcome: &str) -> u64 {
        self.n(
            "tidewall_calls_total",
            &[("policy", policy), ("name", name), ("outcome", outcome)],
        )
    }
    fn rejections(&self, policy: &str, name: &str, reason: &str) -> u64 {
        self.n(
            "tidewall_rejections_total",
            &[("policy", policy), ("name", name), ("reason", reason)],
        )
    }
    /// Every refusal counted under `name`, whatever its policy and reason.
    fn rejections_of(&self, name: &str) -> u64 {
        self.n("tidewall_rejections_total", &[("name", name)])
    }
    fn retries(&self, policy: &str, name: &str) -> u64 {
        self.n(
            "tidewall_retries_total",
            &[("policy", policy), ("name", name)],
        )
    }
}

// =============================================================================================
// 1. AdmitLayer over an adaptive limiter: refusals inside ignored, errors and timeouts learnt
// =============================================================================================

// Per mode: every refusal kind from the service below changes nothing; a timeout from inside
// halves the limit (8 → 4), a refusal after it changes nothing, an error halves it (4 → 2), a
// success that found half the limit in use adds one (2 → 3, AIMD's rule). Then real layers
// inside: a `TimeoutLayer` (a failure: 3 → 1), a bulkhead `AdmitLayer` whose `max_wait` runs
// out (`DeadlineExceeded`: ignored), a bulkhead whose own `max_wait` runs out (`BulkheadFull`:
// ignored), a `PipelineLayer` whose deadline cuts the call (`DeadlineExceeded`: ignored), and
// a `PipelineLayer` whose attempt timeout cuts it (`TimedOut`: a failure). The limiter hears
// none of it (it refused nothing), and counts no rejection of its own but the one a `Reject`
// layer makes while its slots are all held.
async fn refusals_inside_an_adaptive_admit_layer<R: Runtime>(rt: Clocked<R>) {
    for mode in MODES {
        let ear = Ear::default();
        let ((outer, gate, pool), snapshotter) = recorded(|| {
            let outer = learner(&rt, "outer", 8, 8, DAY)
                .max_queue(16)
                .max_wait(None)
                .on_event(ear.listener())
                .build()
                .unwrap();
            let gate = one_slot(&rt, "gate", 4).max_wait(None).build().unwrap();
            let pool = one_slot(&rt, "pool", 4).max_wait(ms(30)).build().unwrap();
            (outer, gate, pool)
        });
        let mut books = Books::new(snapshotter);
        let layer = admit(&outer, mode, &rt);
        let script = Script::new(&rt);
        let service = layer.layer(script.clone());
        let at = |what: &str| format!("{mode:?}: {what}");

        // Every slot held: a `Reject` layer refuses with its own reason; a waiting one is
        // admitted when they free, and then the service below refuses: ignored.
        let held: Vec<_> = (0..8).map(|_| outer.try_acquire().unwrap()).collect();
        script.plan(|_| Reply::Refuse(Rejected::BudgetExhausted));
        let release = async {
            rt.sleep(10 * MS).await;
            drop(held);
        };
        let start = rt.now();
        let (answer, ()) = futures_util::join!(service.clone().oneshot(0u32), release);
        if mode == AdmitMode::Reject {
            assert_eq!(
                answer,
                Err(Error::Rejected(Rejected::BulkheadFull)),
                "{mode:?}"
            );
            assert_eq!(script.calls(), 0, "{mode:?}");
            assert_eq!(rt.now() - start, 10 * MS, "{mode:?}");
        } else {
            assert_eq!(
                answer,
                Err(Error::Rejected(Rejected::BudgetExhausted)),
                "{mode:?}"
            );
            assert_eq!(script.calls(), 1, "{mode:?}");
            assert_eq!(
                rt.now() - start,
                10 * MS,
                "{mode:?}: admitted as the slots freed"
            );
        }
        assert_eq!(
            (outer.limit(), outer.in_flight()),
            (8, 0),
            "{}",
            at("waited")
        );

        for why in every_refusal() {
            script.plan(move |_| Reply::Refuse(why));
            let start = rt.now();
            assert_eq!(
                service.clone().oneshot(1u32).await,
                Err(Error::Rejected(why)),
                "{}",
                at("the refusal comes back as it was")
            );
            assert_eq!(rt.now(), start, "{}", at("at once"));
            assert_eq!(
                (outer.limit(), outer.in_flight()),
                (8, 0),
                "{}",
                at(&format!("{why:?} is ignored"))
            );
            assert_eq!(script.calls(), 1);
        }

        script.plan(|_| Reply::TimedOut);
        assert_eq!(service.clone().oneshot(2u32).await, Err(Error::TimedOut));
        assert_eq!(outer.limit(), 4, "{}", at("a timeout inside is a failure"));

        for why in every_refusal() {
            script.plan(move |_| Reply::Refuse(why));
            assert_eq!(
                service.clone().oneshot(3u32).await,
                Err(Error::Rejected(why))
            );
            assert_eq!(outer.limit(), 4, "{}", at(&format!("{why:?} after a drop")));
        }

        script.plan(|_| Reply::Fail(0));
        assert_eq!(
            service.clone().oneshot(4u32).await,
            Err(Error::Inner("down"))
        );
        assert_eq!(outer.limit(), 2, "{}", at("an error is a failure"));

        // At 2, a call finds half the limit in use: a success would add one, a refusal
        // inside must not.
        for why in every_refusal() {
            script.plan(move |_| Reply::Refuse(why));
            assert_eq!(
                service.clone().oneshot(3u32).await,
                Err(Error::Rejected(why))
            );
            assert_eq!(
                outer.limit(),
                2,
                "{}",
                at(&format!("{why:?} is no success"))
            );
        }

        script.plan(|_| Reply::Ok(1));
        assert_eq!(service.clone().oneshot(5u32).await, Ok(1));
        assert_eq!(
            outer.limit(),
            3,
            "{}",
            at("a success that found half the limit in use adds one")
        );

        // A real timeout layer inside: a failure (3 × 0.5, truncated).
        script.plan(|_| Reply::Ok(50));
        let timed = layer.layer(
            TimeoutLayer::new(10 * MS)
                .runtime(rt.clone())
                .layer(script.clone()),
        );
        let start = rt.now();
        assert_eq!(timed.oneshot(6u32).await, Err(Error::TimedOut));
        assert_eq!(rt.now() - start, 10 * MS);
        assert_eq!(outer.limit(), 1, "{}", at("a TimeoutLayer inside"));
        assert_eq!(script.live(), 0);

        // A success at limit 1 (one in flight: half of it) adds one.
        script.plan(|_| Reply::Ok(0));
        assert_eq!(service.clone().oneshot(7u32).await, Ok(1));
        assert_eq!(outer.limit(), 2);

        // A bulkhead layer inside whose wait the layer's `max_wait` ends: `DeadlineExceeded`
        // (the wait ran out, the dependency never called): ignored.
        let gated = layer.layer(
            admit(&gate, AdmitMode::WaitCall, &rt)
                .max_wait(20 * MS)
                .layer(script.clone()),
        );
        let gate_held = gate.try_acquire_owned().unwrap();
        let start = rt.now();
        assert_eq!(
            gated.clone().oneshot(8u32).await,
            Err(Error::Rejected(Rejected::DeadlineExceeded))
        );
        assert_eq!(rt.now() - start, 20 * MS);
        assert_eq!(
            (outer.limit(), outer.in_flight()),
            (2, 0),
            "{}",
            at("a DeadlineExceeded from inside is ignored")
        );
        drop(gate_held);
        assert_eq!((gate.in_flight(), gate.queued()), (0, 0));

        // A bulkhead whose own `max_wait` runs out: `BulkheadFull`, ignored.
        let pooled = layer.layer(admit(&pool, AdmitMode::WaitCall, &rt).layer(script.clone()));
        let pool_held = pool.try_acquire_owned().unwrap();
        let start = rt.now();
        assert_eq!(
            pooled.clone().oneshot(9u32).await,
            Err(Error::Rejected(Rejected::BulkheadFull))
        );
        assert_eq!(rt.now() - start, 30 * MS);
        assert_eq!(
            outer.limit(),
            2,
            "{}",
            at("a bulkhead's wait that timed out")
        );
        drop(pool_held);

        // A pipeline inside whose deadline cuts the call: ignored, though the service ran.
        script.plan(|_| Reply::Ok(100));
        let deadline = pipeline_named(&rt, "inside_deadline", 40 * MS)
            .build()
            .unwrap();
        let cut = layer.layer(PipelineLayer::new(deadline).layer(script.clone()));
        let start = rt.now();
        assert_eq!(
            cut.oneshot(10u32).await,
            Err(Error::Rejected(Rejected::DeadlineExceeded))
        );
        assert_eq!(rt.now() - start, 40 * MS);
        assert_eq!(
            outer.limit(),
            2,
            "{}",
            at("a deadline inside that cut a running call is still a refusal")
        );
        assert_eq!(script.live(), 0);

        // A pipeline inside whose attempt timeout cuts the call: a timeout, a failure.
        let attempt = Pipeline::builder()
            .runtime(rt.clone())
            .name("inside_attempt")
            .attempt_timeout(15 * MS)
            .build()
            .unwrap();
        let timed_out = layer.layer(PipelineLayer::new(attempt).layer(script.clone()));
        let start = rt.now();
        assert_eq!(timed_out.oneshot(11u32).await, Err(Error::TimedOut));
        assert_eq!(rt.now() - start, 15 * MS);
        assert_eq!(outer.limit(), 1, "{}", at("an attempt timeout inside"));

        assert_eq!((outer.in_flight(), outer.queued()), (0, 0));
        assert_eq!(script.live(), 0);
        books.read();
        let own = u64::from(mode == AdmitMode::Reject);
        assert_eq!(
            books.rejections_of("outer"),
            own,
            "{}",
            at("the limiter counts only its own refusals")
        );
        assert_eq!(books.rejections("adaptive", "outer", "bulkhead_full"), own);
        assert_eq!(books.rejections("bulkhead", "gate", "deadline_exceeded"), 1);
        assert_eq!(books.rejections("bulkhead", "pool", "bulkhead_full"), 1);
        let heard = ear.take();
        if mode == AdmitMode::Reject {
            assert_eq!(heard, lines(&["outer rejected bulkhead_full"]), "{mode:?}");
        } else {
            // Its one wait ended admitted (`Waited`, not a refusal); nothing else is its own.
            assert_eq!(heard.len(), 1, "{mode:?}: {heard:?}");
            assert!(heard[0].starts_with("outer Waited("), "{mode:?}: {heard:?}");
        }
    }
}

#[test]
fn an_adaptive_admit_layer_ignores_every_refusal_inside_and_learns_errors_and_timeouts() {
    on_every_runtime!(refusals_inside_an_adaptive_admit_layer);
}

// =============================================================================================
// 2. WaitReady: a slot taken in `poll_ready` a day before the call
// =============================================================================================

// "in `WaitReady` mode the time runs from `poll_ready`'s admission, so a service left idle
// after it looks slow": a success a day after `ready()` is a slow call (a drop, 8 → 4), but a
// refusal from inside a day after `ready()` is ignored however long the slot was held, for
// every kind.
async fn a_day_between_ready_and_call<R: Runtime>(rt: Clocked<R>) {
    let limiter = learner(&rt, "idle", 8, 8, SEC).build().unwrap();
    let script = Script::new(&rt);
    let mut service = admit(&limiter, AdmitMode::WaitReady, &rt).layer(script.clone());
    for why in every_refusal() {
        script.plan(move |_| Reply::Refuse(why));
        tower::ServiceExt::<u32>::ready(&mut service).await.unwrap();
        assert_eq!(limiter.in_flight(), 1, "the slot is taken in poll_ready");
        rt.sleep(DAY).await;
        assert_eq!(service.call(1).await, Err(Error::Rejected(why)));
        assert_eq!(
            (limiter.limit(), limiter.in_flight()),
            (8, 0),
            "{why:?} a day after ready(): ignored, not a slow call"
        );
    }
    script.plan(|_| Reply::Ok(0));
    tower::ServiceExt::<u32>::ready(&mut service).await.unwrap();
    rt.sleep(DAY).await;
    assert_eq!(service.call(2).await, Ok(1));
    assert_eq!(limiter.limit(), 4, "a success a day after ready() is slow");
    // A service dropped after its slot was taken gives it back and teaches nothing.
    tower::ServiceExt::<u32>::ready(&mut service).await.unwrap();
    assert_eq!(limiter.in_flight(), 1);
    rt.sleep(DAY).await;
    drop(service);
    assert_eq!((limiter.limit(), limiter.in_flight()), (4, 0));
}

#[test]
fn a_refusal_inside_a_day_after_wait_ready_admitted_is_ignored_not_slow() {
    on_every_runtime!(a_day_between_ready_and_call);
}

// =============================================================================================
// 3. The inner service is `Clone`: a call that waits takes the service poll_ready readied
// =============================================================================================

/// A service that may be called only after its own `poll_ready` (as a `Buffer` or a pool):
/// a clone starts not ready.
#[derive(Default)]
struct Picky {
    ready: bool,
    unready_calls: Arc<AtomicU32>,
}

impl Clone for Picky {
    fn clone(&self) -> Self {
        Self {
            ready: false,
            unready_calls: Arc::clone(&self.unready_calls),
        }
    }
}

impl Service<u32> for Picky {
    type Response = u32;
    type Error = E;
    type Future = std::future::Ready<Result<u32, E>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u32) -> Self::Future {
        if !std::mem::take(&mut self.ready) {
            self.unready_calls.fetch_add(1, SeqCst);
            return std::future::ready(Err(Error::Inner("called without poll_ready")));
        }
        std::future::ready(Ok(x))
    }
}

// "a call not admitted at once takes the service `poll_ready` made ready into its future, to
// call it once admitted, and leaves a clone in its place (tower's clone-and-swap)": two calls
// queue behind a held slot in `WaitCall`, each after its own `poll_ready`; both reach a
// service that was made ready, and the limiter learns two successes at its most (no change).
async fn clone_and_swap<R: Runtime>(rt: Clocked<R>) {
    let limiter = learner(&rt, "swap", 1, 1, DAY)
        .max_queue(4)
        .build()
        .unwrap();
    let picky = Picky::default();
    let unready = Arc::clone(&picky.unready_calls);
    let mut service = admit(&limiter, AdmitMode::WaitCall, &rt).layer(picky);
    let held = limiter.try_acquire().unwrap();
    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    let first = service.call(1);
    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    let second = service.call(2);
    let release = async {
        rt.sleep(10 * MS).await;
        drop(held);
    };
    let (a, b, ()) = futures_util::join!(first, second, release);
    assert_eq!((a, b), (Ok(1), Ok(2)));
    assert_eq!(
        unready.load(SeqCst),
        0,
        "every call reached a ready service"
    );
    assert_eq!(
        (limiter.limit(), limiter.in_flight(), limiter.queued()),
        (1, 0, 0)
    );
}

#[test]
fn a_waiting_call_takes_the_readied_service_and_leaves_a_clone() {
    on_every_runtime!(clone_and_swap);
}

// =============================================================================================
// 4. AdmitLayer(adaptive) over PipelineLayer(adaptive bulkhead, breaker) over AdmitLayer(bulkhead)
// =============================================================================================

// Phase by phase, with exact limits, breaker counts, events, elapsed virtual time and
// metrics: (a) the bulkhead below full: three attempts refused, 20 ms of backoff, nothing
// learnt anywhere, three `bulkhead_full` counted by the bulkhead (not by anyone else), one
// `rejected` call; (b) a failure, then refusals: the pipeline's limiter learns the failure
// (8 → 4), the outer one (which sees a refusal) nothing; (c) a refusal then a success;
// (d) the pipeline's deadline cuts a slow call: the outer layer ignores the
// `DeadlineExceeded`, the pipeline's limiter learns a failure ("the deadline running out
// during the call"), its breaker records nothing; (e) a timeout layer below the pipeline: a
// failure for everyone, retried; (f) `InsufficientCapacity` below: never retried.
async fn adaptive_over_pipeline_over_bulkhead<R: Runtime>(rt: Clocked<R>) {
    let ear = Ear::default();
    let ((outer, inner, own, below, pipeline), snapshotter) = recorded(|| {
        // 15 ms: a refusal that took longer would be a slow drop, were it a response.
        let outer = learner(&rt, "outer", 8, 8, 15 * MS).build().unwrap();
        let inner = learner(&rt, "inner", 8, 8, DAY).build().unwrap();
        let own = breaker(&rt, "own", 5).build().unwrap();
        let below = one_slot(&rt, "below", 0).build().unwrap();
        let pipeline = staged(&rt, "mid", SEC, &inner, &own)
            .on_event(ear.listener())
            .build()
            .unwrap();
        (outer, inner, own, below, pipeline)
    });
    let mut books = Books::new(snapshotter);
    let script = Script::new(&rt);
    let service = ServiceBuilder::new()
        .layer(admit(&outer, AdmitMode::Reject, &rt))
        .layer(PipelineLayer::new(pipeline.clone()))
        .layer(admit(&below, AdmitMode::Reject, &rt))
        .service(script.clone());
    let counts = |b: &CircuitBreaker<Clocked<R>>| {
        let c = b.counts();
        (c.calls, c.failures)
    };

    // (a) The bulkhead below is full.
    let held = below.try_acquire_owned().unwrap();
    let start = rt.now();
    assert_eq!(
        service.clone().oneshot(1u32).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(rt.now() - start, 20 * MS, "(a) two backoffs of 10 ms");
    assert_eq!(script.calls(), 0);
    assert_eq!((outer.limit(), inner.limit()), (8, 8), "(a) nothing learnt");
    assert_eq!((counts(&own), own.state()), ((0, 0), State::Closed));
    assert_eq!(
        ear.take(),
        lines(&[
            "mid retry 1 10ms",
            "mid retry 2 10ms",
            "mid rejected bulkhead_full"
        ])
    );
    assert_eq!(below.rejected(), 3);
    books.read();
    assert_eq!(books.calls("pipeline", "mid", "rejected"), 1);
    assert_eq!(books.calls("pipeline", "mid", "failure"), 0);
    assert_eq!(books.retries("pipeline", "mid"), 2);
    assert_eq!(books.calls("breaker", "own", "ignored"), 3);
    assert_eq!(books.calls("breaker", "own", "failure"), 0);
    assert_eq!(books.rejections("bulkhead", "below", "bulkhead_full"), 3);
    assert_eq!(
        books.n("tidewall_rejections_total", &[]),
        3,
        "(a) each refusal counted once, by the bulkhead that made it"
    );
    drop(held);

    // (b) A failure, then two refusals: the call ends refused.
    script.plan(|n| match n {
        1 => Reply::Fail(0),
        2 => Reply::Refuse(Rejected::RateLimited {
            retry_after: 30 * MS,
        }),
        _ => Reply::Refuse(Rejected::BulkheadFull),
    });
    let start = rt.now();
    assert_eq!(
        service.clone().oneshot(2u32).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(rt.now() - start, 40 * MS, "(b) 10 ms, then the 30 ms hint");
    assert_eq!(script.calls(), 3);
    assert_eq!(
        inner.limit(),
        4,
        "(b) the pipeline's limiter learns its last attempt that was not refused: a failure"
    );
    assert_eq!(
        outer.limit(),
        8,
        "(b) the outer layer saw a refusal: ignored"
    );
    assert_eq!(counts(&own), (1, 1));
    assert_eq!(
        ear.take(),
        lines(&[
            "mid retry 1 10ms",
            "mid retry 2 30ms",
            "mid rejected bulkhead_full"
        ])
    );
    books.read();
    assert_eq!(books.calls("pipeline", "mid", "rejected"), 1);
    assert_eq!(books.calls("breaker", "own", "failure"), 1);
    assert_eq!(books.calls("breaker", "own", "ignored"), 2);
    assert_eq!(books.n("tidewall_rejections_total", &[]), 0);

    // (c) A refusal, then a success.
    script.plan(|n| match n {
        1 => Reply::Refuse(Rejected::CircuitOpen {
            retry_after: 25 * MS,
        }),
        _ => Reply::Ok(0),
    });
    let start = rt.now();
    assert_eq!(service.clone().oneshot(3u32).await, Ok(2));
    assert_eq!(rt.now() - start, 25 * MS);
    assert_eq!(
        (outer.limit(), inner.limit()),
        (4, 4),
        "(c) a response after 25 ms is slower than the outer 15 ms: a drop for it"
    );
    assert_eq!(counts(&own), (2, 1));
    assert_eq!(ear.take(), lines(&["mid retry 1 25ms", "mid Succeeded"]));
    books.read();
    assert_eq!(books.calls("pipeline", "mid", "success"), 1);
    assert_eq!(books.calls("breaker", "own", "success"), 1);
    assert_eq!(books.calls("breaker", "own", "ignored"), 1);

    // (d) The pipeline's own deadline cuts a slow call.
    script.plan(|_| Reply::Ok(2_000));
    let start = rt.now();
    assert_eq!(
        service.clone().oneshot(4u32).await,
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    assert_eq!(rt.now() - start, SEC);
    assert_eq!(script.live(), 0, "(d) the cut attempt was dropped");
    assert_eq!(
        outer.limit(),
        4,
        "(d) the outer layer ignores a DeadlineExceeded"
    );
    assert_eq!(
        inner.limit(),
        2,
        "(d) the deadline running out during the call is a failure for the pipeline's stage"
    );
    assert_eq!(
        counts(&own),
        (2, 1),
        "(d) the deadline's cut records nothing"
    );
    assert_eq!(ear.take(), lines(&["mid rejected deadline_exceeded"]));
    books.read();
    assert_eq!(books.calls("pipeline", "mid", "rejected"), 1);

    // (e) A timeout layer below the pipeline: every attempt times out.
    script.plan(|_| Reply::Ok(50));
    let timing_out = ServiceBuilder::new()
        .layer(admit(&outer, AdmitMode::Reject, &rt))
        .layer(PipelineLayer::new(pipeline.clone()))
        .layer(TimeoutLayer::new(10 * MS).runtime(rt.clone()))
        .service(script.clone());
    let start = rt.now();
    assert_eq!(timing_out.oneshot(5u32).await, Err(Error::TimedOut));
    assert_eq!(
        rt.now() - start,
        50 * MS,
        "(e) three 10 ms timeouts, two 10 ms backoffs"
    );
    assert_eq!(
        (outer.limit(), inner.limit()),
        (2, 1),
        "(e) a failure for both"
    );
    assert_eq!((counts(&own), own.state()), ((5, 4), State::Closed));
    assert_eq!(
        ear.take(),
        lines(&["mid retry 1 10ms", "mid retry 2 10ms", "mid Failed"])
    );
    books.read();
    assert_eq!(books.calls("pipeline", "mid", "failure"), 1);
    assert_eq!(books.calls("pipeline", "mid", "timed_out"), 0);
    assert_eq!(books.calls("breaker", "own", "failure"), 3);

    // (f) `InsufficientCapacity` below can never pass: not retried, nothing learnt.
    script.plan(|_| Reply::Refuse(Rejected::InsufficientCapacity { burst: 2 }));
    let start = rt.now();
    assert_eq!(
        service.clone().oneshot(6u32).await,
        Err(Error::Rejected(Rejected::InsufficientCapacity { burst: 2 }))
    );
    assert_eq!(rt.now(), start);
    assert_eq!(script.calls(), 1);
    assert_eq!((outer.limit(), inner.limit()), (2, 1));
    assert_eq!(counts(&own), (5, 4));
    assert_eq!(ear.take(), lines(&["mid rejected insufficient_capacity"]));
    books.read();
    assert_eq!(books.retries("pipeline", "mid"), 0);
    assert_eq!(books.calls("breaker", "own", "ignored"), 1);

    assert_eq!(
        (outer.in_flight(), inner.in_flight(), below.in_flight()),
        (0, 0, 0)
    );
    assert_eq!(script.live(), 0);
}

#[test]
fn an_adaptive_layer_over_a_pipeline_over_a_bulkhead_learns_exactly_what_the_docs_say() {
    on_every_runtime!(adaptive_over_pipeline_over_bulkhead);
}

// =============================================================================================
// 5. Every refusal kind from below a pipeline, under an adaptive layer
// =============================================================================================

// Retried after the refusal's `retry_after` (at least the 10 ms backoff), "but for
// `InsufficientCapacity`": three attempts per kind but that one. Nothing is learnt by the
// outer limiter, the pipeline's limiter or its breaker; each call is counted `rejected`.
async fn every_kind_below_a_pipeline<R: Runtime>(rt: Clocked<R>) {
    let ear = Ear::default();
    let ((outer, inner, own, pipeline), snapshotter) = recorded(|| {
        // 15 ms: refusals that took 20-80 ms would be slow drops, were they responses.
        let outer = learner(&rt, "kinds_outer", 8, 8, 15 * MS).build().unwrap();
        let inner = learner(&rt, "kinds_inner", 4, 8, 15 * MS).build().unwrap();
        let own = breaker(&rt, "kinds_own", 1)
            .break_duration(SEC)
            .build()
            .unwrap();
        let pipeline = staged(&rt, "kinds", 10 * SEC, &inner, &own)
            .on_event(ear.listener())
            .build()
            .unwrap();
        (outer, inner, own, pipeline)
    });
    let mut books = Books::new(snapshotter);
    let script = Script::new(&rt);
    let service = ServiceBuilder::new()
        .layer(admit(&outer, AdmitMode::WaitCall, &rt))
        .layer(PipelineLayer::new(pipeline))
        .service(script.clone());
    let mut retries = 0;
    for why in every_refusal() {
        script.plan(move |_| Reply::Refuse(why));
        let start = rt.now();
        assert_eq!(
            service.clone().oneshot(1u32).await,
            Err(Error::Rejected(why)),
            "{why:?}"
        );
        let took = rt.now() - start;
        let heard = ear.take();
        let end = format!("kinds rejected {}", why.kind());
        if matches!(why, Rejected::InsufficientCapacity { .. }) {
            assert_eq!(script.calls(), 1, "{why:?}: never retried");
            assert_eq!(took, Duration::ZERO);
            assert_eq!(heard, [end]);
        } else {
            let delay = hint_of(why).max(10 * MS);
            assert_eq!(script.calls(), 3, "{why:?}: retried");
            assert_eq!(took, 2 * delay, "{why:?}");
            assert_eq!(heard, retried_twice("kinds", delay, end), "{why:?}");
            retries += 2;
        }
        assert_eq!(
            (outer.limit(), inner.limit(), own.state()),
            (8, 4, State::Closed),
            "{why:?}: nothing learnt"
        );
    }
    assert_eq!((own.counts().calls, own.counts().failures), (0, 0));
    books.read();
    assert_eq!(books.calls("pipeline", "kinds", "rejected"), 9);
    assert_eq!(books.calls("pipeline", "kinds", "failure"), 0);
    assert_eq!(books.retries("pipeline", "kinds"), retries);
    assert_eq!(books.calls("breaker", "kinds_own", "ignored"), 25);
    assert_eq!(books.calls("breaker", "kinds_own", "failure"), 0);
    assert_eq!(
        books.n("tidewall_rejections_total", &[]),
        0,
        "no policy here refused anything"
    );
    // The sensitivity of the setup: a real failure opens the pipeline's breaker (one in a
    // row, a 1 s break); the retry waits the breaker's own refusal out, the probe fails, and
    // the failure is the answer, learnt by both limiters.
    script.plan(|_| Reply::Fail(0));
    let start = rt.now();
    assert_eq!(
        service.clone().oneshot(2u32).await,
        Err(Error::Inner("down"))
    );
    assert_eq!(rt.now() - start, SEC);
    assert_eq!(
        script.calls(),
        2,
        "the middle attempt was refused by the breaker"
    );
    assert_eq!(
        ear.take(),
        lines(&["kinds retry 1 10ms", "kinds retry 2 990ms", "kinds Failed"])
    );
    assert_eq!((outer.limit(), inner.limit()), (4, 2));
    assert_eq!(own.state(), State::Open);
    books.read();
    assert_eq!(books.rejections("breaker", "kinds_own", "circuit_open"), 1);
    assert_eq!(books.calls("pipeline", "kinds", "failure"), 1);
}

#[test]
fn every_refusal_kind_below_a_pipeline_is_retried_by_its_hint_and_teaches_nothing() {
    on_every_runtime!(every_kind_below_a_pipeline);
}

// =============================================================================================
// 6. The call's only request: NoClone and a closure that copies some requests
// =============================================================================================

/// A request that cannot be copied (a streaming body, an axum `Request<Body>`).
struct Charge(u32);

// "A request that could not be copied is sent itself, and that attempt is the call's last,
// even if a layer below refuses it (the refusal took the request). An attempt the breaker
// refuses sends nothing and needs no request." Under an adaptive layer that learns nothing
// from any of it.
async fn the_only_request<R: Runtime>(rt: Clocked<R>) {
    let ear = Ear::default();
    let outer = learner(&rt, "once_outer", 8, 8, DAY).build().unwrap();
    let own = breaker(&rt, "once_own", 1)
        .break_duration(30 * MS)
        .build()
        .unwrap();
    let pipeline = pipeline_named(&rt, "once", 10 * SEC)
        .on_event(ear.listener())
        .retry(constant(10 * MS, 3))
        .breaker(own.clone())
        .build()
        .unwrap();
    let script = Script::new(&rt);
    let once = ServiceBuilder::new()
        .layer(admit(&outer, AdmitMode::Reject, &rt))
        .layer(PipelineLayer::new(pipeline.clone()).clone_requests(NoClone))
        .service(script.clone());

    // Refused below: that was the request; no retry.
    script.plan(|_| Reply::Refuse(Rejected::BulkheadFull));
    let start = rt.now();
    assert_eq!(
        once.clone().oneshot(Charge(1)).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!((script.calls(), rt.now() - start), (1, Duration::ZERO));
    assert_eq!(ear.take(), lines(&["once rejected bulkhead_full"]));

    // The pipeline's own breaker refuses first: that attempt sent nothing, so the request is
    // still there after the break.
    own.try_acquire().unwrap().failure();
    script.plan(|_| Reply::Ok(0));
    let start = rt.now();
    assert_eq!(once.clone().oneshot(Charge(2)).await, Ok(1));
    assert_eq!(rt.now() - start, 30 * MS);
    assert_eq!(ear.take(), lines(&["once retry 1 30ms", "once Succeeded"]));
    assert_eq!(own.state(), State::Closed);

    // The breaker's refusal, then the request sent and refused below: the call's last.
    own.try_acquire().unwrap().failure();
    script.plan(|_| {
        Reply::Refuse(Rejected::RateLimited {
            retry_after: 5 * MS,
        })
    });
    let start = rt.now();
    assert_eq!(
        once.clone().oneshot(Charge(3)).await,
        Err(Error::Rejected(Rejected::RateLimited {
            retry_after: 5 * MS
        }))
    );
    assert_eq!((script.calls(), rt.now() - start), (1, 30 * MS));
    assert_eq!(
        ear.take(),
        lines(&["once retry 1 30ms", "once rejected rate_limited"])
    );
    assert_eq!(
        own.state(),
        State::HalfOpen,
        "the probe refused below is Ignored: its slot given back, the breaker still half-open"
    );
    script.plan(|_| Reply::Ok(0));
    assert_eq!(once.clone().oneshot(Charge(4)).await, Ok(1));
    assert_eq!(own.state(), State::Closed, "the next caller was the probe");
    ear.take();

    // A closure that copies even requests only: those are retried, odd ones sent once.
    let some = ServiceBuilder::new()
        .layer(admit(&outer, AdmitMode::Reject, &rt))
        .layer(
            PipelineLayer::new(pipeline)
                .clone_requests(|c: &Charge| c.0.is_multiple_of(2).then_some(Charge(c.0))),
        )
        .service(script.clone());
    script.plan(|_| Reply::Refuse(Rejected::BulkheadFull));
    let start = rt.now();
    assert_eq!(
        some.clone().oneshot(Charge(6)).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!((script.calls(), rt.now() - start), (3, 20 * MS));
    script.plan(|_| Reply::Refuse(Rejected::BulkheadFull));
    let start = rt.now();
    assert_eq!(
        some.clone().oneshot(Charge(7)).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!((script.calls(), rt.now() - start), (1, Duration::ZERO));
    assert_eq!(
        ear.take(),
        lines(&[
            "once retry 1 10ms",
            "once retry 2 10ms",
            "once rejected bulkhead_full",
            "once rejected bulkhead_full"
        ])
    );

    assert_eq!((outer.limit(), outer.in_flight()), (8, 0), "nothing learnt");
    let c = own.counts();
    assert_eq!(
        (c.calls, c.failures),
        (0, 0),
        "only successes and refusals since"
    );
}

#[test]
fn a_request_sent_once_is_not_retried_after_a_refusal_below_but_is_after_the_breakers_own() {
    on_every_runtime!(the_only_request);
}

// =============================================================================================
// 7. BreakerLayer over admission: refusals below recorded as Ignored
// =============================================================================================

// A breaker that opens on one failure, over a rate limiter of one call per 100 ms: four calls
// refused by the limiter leave it closed with one success in its window, heard and counted as
// `ignored`; the limiter counts four `rate_limited` (each refusal once, by the limiter). Every
// kind straight from the service below: ignored too. A timeout from below is a failure: it
// opens. Half-open, a probe refused below gives its slot back; the next caller probes and
// closes it. A bulkhead layer below with a `max_wait` (`DeadlineExceeded`), under a breaker
// that waits in `poll_ready`: ignored.
async fn breaker_over_admission<R: Runtime>(rt: Clocked<R>) {
    let ear = Ear::default();
    let ((guard, pace, gate), snapshotter) = recorded(|| {
        let guard = breaker(&rt, "guard", 1)
            .break_duration(SEC)
            .half_open_probes(1)
            .on_event(ear.listener())
            .build()
            .unwrap();
        let pace = pace_limiter(&rt);
        let gate = one_slot(&rt, "gate", 2).max_wait(None).build().unwrap();
        (guard, pace, gate)
    });
    let mut books = Books::new(snapshotter);
    let script = Script::new(&rt);
    let counts = || {
        let c = guard.counts();
        (c.calls, c.failures)
    };

    let paced = ServiceBuilder::new()
        .layer(BreakerLayer::new(guard.clone()))
        .layer(admit(&pace, AdmitMode::Reject, &rt))
        .service(script.clone());
    assert_eq!(paced.clone().oneshot(0u32).await, Ok(1));
    for i in 0..4u32 {
        rt.sleep(10 * MS).await;
        assert_eq!(
            paced.clone().oneshot(0u32).await,
            Err(Error::Rejected(Rejected::RateLimited {
                retry_after: (90 - 10 * i) * MS
            })),
            "refusal {i}: the limiter's exact hint"
        );
    }
    assert_eq!((guard.state(), counts()), (State::Closed, (1, 0)));
    assert_eq!(
        ear.take(),
        lines(&[
            "guard Succeeded",
            "guard Ignored",
            "guard Ignored",
            "guard Ignored",
            "guard Ignored"
        ])
    );
    books.read();
    assert_eq!(books.calls("breaker", "guard", "success"), 1);
    assert_eq!(books.calls("breaker", "guard", "ignored"), 4);
    assert_eq!(books.calls("breaker", "guard", "failure"), 0);
    assert_eq!(books.rejections("rate", "pace", "rate_limited"), 4);
    assert_eq!(
        books.rejections_of("guard"),
        0,
        "the breaker refused nothing"
    );
    assert_eq!(books.n("tidewall_rejections_total", &[]), 4);

    // Every kind, straight from the service below.
    let bare = BreakerLayer::new(guard.clone()).layer(script.clone());
    for why in every_refusal() {
        script.plan(move |_| Reply::Refuse(why));
        assert_eq!(bare.clone().oneshot(0u32).await, Err(Error::Rejected(why)));
        assert_eq!(
            (guard.state(), counts()),
            (State::Closed, (1, 0)),
            "{why:?}"
        );
    }
    assert_eq!(ear.take(), vec!["guard Ignored".to_owned(); 9]);

    // A timeout from below is a failure: one opens it.
    script.plan(|_| Reply::TimedOut);
    assert_eq!(bare.clone().oneshot(0u32).await, Err(Error::TimedOut));
    assert_eq!(guard.state(), State::Open);
    script.plan(|_| Reply::Ok(0));
    assert_eq!(
        bare.clone().oneshot(0u32).await,
        Err(Error::Rejected(Rejected::CircuitOpen { retry_after: SEC }))
    );
    assert_eq!(script.calls(), 0);
    assert_eq!(
        ear.take(),
        lines(&[
            "guard Failed",
            "guard Closed->Open",
            "guard rejected circuit_open"
        ])
    );

    // Half-open: the probe is refused below (ignored, its slot given back); the next caller
    // is the probe, and closes it.
    rt.sleep(SEC).await;
    script.plan(|_| Reply::Refuse(Rejected::BulkheadFull));
    assert_eq!(
        bare.clone().oneshot(0u32).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(guard.state(), State::HalfOpen);
    script.plan(|_| Reply::Ok(0));
    assert_eq!(bare.clone().oneshot(0u32).await, Ok(1));
    assert_eq!(guard.state(), State::Closed);
    assert_eq!(
        ear.take(),
        lines(&[
            "guard Open->HalfOpen",
            "guard Ignored",
            "guard Succeeded",
            "guard HalfOpen->Closed"
        ])
    );

    // A breaker waiting in `poll_ready`, over a bulkhead layer whose `max_wait` runs out.
    let gated = ServiceBuilder::new()
        .layer(BreakerLayer::new(guard.clone()).wait_in_ready(None))
        .layer(admit(&gate, AdmitMode::WaitCall, &rt).max_wait(20 * MS))
        .service(script.clone());
    let held = gate.try_acquire_owned().unwrap();
    let start = rt.now();
    assert_eq!(
        gated.clone().oneshot(0u32).await,
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    assert_eq!(rt.now() - start, 20 * MS);
    assert_eq!(guard.state(), State::Closed);
    assert_eq!(ear.take(), lines(&["guard Ignored"]));
    drop(held);
    books.read();
    assert_eq!(books.calls("breaker", "guard", "ignored"), 11);
    assert_eq!(books.calls("breaker", "guard", "failure"), 1);
    assert_eq!(books.calls("breaker", "guard", "success"), 1);
    assert_eq!(books.rejections("breaker", "guard", "circuit_open"), 1);
    assert_eq!(books.rejections("bulkhead", "gate", "deadline_exceeded"), 1);
    assert_eq!(
        books.n("tidewall_rejections_total", &[]),
        2,
        "the breaker's own refusal and the bulkhead's; none for refusals merely passed up"
    );
    assert_eq!(script.live(), 0);
}

#[test]
fn a_breaker_layer_records_every_refusal_below_as_ignored_and_gives_a_probe_back() {
    on_every_runtime!(breaker_over_admission);
}

// =============================================================================================
// 8. Nested breakers, nested adaptive layers
// =============================================================================================

// An outer breaker (two failures in a row open it) over an inner one (one opens it, 50 ms):
// the inner breaker's refusals are `Ignored` by the outer, so a failure, refusals, a success,
// a failure, refusals never make two failures in a row. Each refusal is counted once, by the
// inner breaker.
async fn nested_breakers<R: Runtime>(rt: Clocked<R>) {
    let ((outer, inner), snapshotter) = recorded(|| {
        let outer = breaker(&rt, "outer_guard", 2).build().unwrap();
        let inner = breaker(&rt, "inner_guard", 1)
            .break_duration(50 * MS)
            .build()
            .unwrap();
        (outer, inner)
    });
    let mut books = Books::new(snapshotter);
    let script = Script::new(&rt);
    let service = ServiceBuilder::new()
        .layer(BreakerLayer::new(outer.clone()))
        .layer(BreakerLayer::new(inner.clone()))
        .service(script.clone());
    for round in 0..3 {
        script.plan(|_| Reply::Fail(0));
        assert_eq!(
            service.clone().oneshot(0u32).await,
            Err(Error::Inner("down"))
        );
        assert_eq!(inner.state(), State::Open, "round {round}");
        for k in 0..3u32 {
            rt.sleep(10 * MS).await;
            assert_eq!(
                service.clone().oneshot(0u32).await,
                Err(Error::Rejected(Rejected::CircuitOpen {
                    retry_after: (40 - 10 * k) * MS
                })),
                "round {round}"
            );
            assert_eq!(outer.state(), State::Closed, "round {round}: refusal {k}");
        }
        rt.sleep(20 * MS).await;
        script.plan(|_| Reply::Ok(0));
        assert_eq!(service.clone().oneshot(0u32).await, Ok(1));
        assert_eq!(
            (outer.state(), inner.state()),
            (State::Closed, State::Closed)
        );
        // An idle gap of a day between rounds changes nothing.
        rt.sleep(DAY).await;
    }
    let c = outer.counts();
    assert_eq!((c.calls, c.failures), (6, 3));
    books.read();
    assert_eq!(
        books.rejections("breaker", "inner_guard", "circuit_open"),
        9
    );
    assert_eq!(books.rejections_of("outer_guard"), 0);
    assert_eq!(books.calls("breaker", "outer_guard", "ignored"), 9);
    assert_eq!(books.calls("breaker", "inner_guard", "ignored"), 0);
}

#[test]
fn an_inner_breakers_refusals_never_open_the_outer_one() {
    on_every_runtime!(nested_breakers);
}

// Two adaptive layers, one over the other: the inner one full refuses (`BulkheadFull`, its
// own, counted once under its name), which the outer ignores; a failure teaches both.
async fn nested_adaptive<R: Runtime>(rt: Clocked<R>) {
    let ((high, low), snapshotter) = recorded(|| {
        (
            learner(&rt, "high", 2, 8, DAY).build().unwrap(),
            learner(&rt, "low", 2, 2, DAY).build().unwrap(),
        )
    });
    let mut books = Books::new(snapshotter);
    let script = Script::new(&rt);
    for mode in MODES {
        let service = ServiceBuilder::new()
            .layer(admit(&high, mode, &rt))
            .layer(admit(&low, AdmitMode::Reject, &rt))
            .service(script.clone());
        let held: Vec<_> = (0..low.limit())
            .map(|_| low.try_acquire().unwrap())
            .collect();
        assert_eq!(
            service.clone().oneshot(0u32).await,
            Err(Error::Rejected(Rejected::BulkheadFull))
        );
        assert_eq!(
            (high.limit(), high.in_flight()),
            (2, 0),
            "{mode:?}: ignored (a success with one of two in flight would add one)"
        );
        drop(held);
    }
    books.read();
    assert_eq!(books.rejections("adaptive", "low", "bulkhead_full"), 3);
    assert_eq!(books.rejections_of("high"), 0);
    script.plan(|_| Reply::Fail(0));
    let service = ServiceBuilder::new()
        .layer(admit(&high, AdmitMode::Reject, &rt))
        .layer(admit(&low, AdmitMode::Reject, &rt))
        .service(script.clone());
    assert_eq!(service.oneshot(0u32).await, Err(Error::Inner("down")));
    assert_eq!((high.limit(), low.limit()), (1, 1));
}

#[test]
fn an_inner_adaptive_layers_refusal_is_ignored_by_the_outer_one() {
    on_every_runtime!(nested_adaptive);
}

// =============================================================================================
// 9. The HTTP client over a send that refuses: every kind, both fronts
// =============================================================================================

#[derive(Clone, Copy, Debug)]
enum Said {
    Status(u16),
    Refuse(Rejected),
    /// The connection was refused (an I/O error: `FailureKind::Connect`).
    Connect,
    /// 200 after this many ms.
    Slow(u64),
}

type Sent = Result<http::Response<()>, Error<std::io::Error>>;
type Answered = Result<http::Response<()>, Error<Error<std::io::Error>>>;

/// A host behind a client (or behind the policies below the stack): 200 to every request
/// unless planned otherwise.
type Host<R> = Planned<R, Said>;

impl<R: Clock> Host<R> {
    fn new(rt: &R) -> Self {
        Self::answering(rt, Said::Status(200))
    }
    /// Requests sent since the last plan.
    fn sent(&self) -> u32 {
        self.count()
    }
    fn send<B>(&self, _request: http::Request<B>) -> BoxFut<Sent> {
        let delay = |said| match said {
            Said::Slow(t) => Some(t),
            _ => None,
        };
        self.next(delay, |_, said| {
            let status = |code: u16| http::Response::builder().status(code).body(()).unwrap();
            match said {
                Said::Status(code) => Ok(status(code)),
                Said::Slow(_) => Ok(status(200)),
                Said::Refuse(why) => Err(Error::Rejected(why)),
                Said::Connect => Err(Error::Inner(std::io::ErrorKind::ConnectionRefused.into())),
            }
        })
    }
    /// The host as a tower service.
    fn service(
        &self,
    ) -> impl Service<
        http::Request<String>,
        Response = http::Response<()>,
        Error = Error<std::io::Error>,
        Future = BoxFut<Sent>,
    > + Clone
    + Send
    + 'static {
        let host = self.clone();
        tower::service_fn(move |r: http::Request<String>| host.send(r))
    }
}

#[derive(Clone, Copy, Debug)]
enum Front {
    Loop,
    Tower,
}

const FRONTS: [Front; 2] = [Front::Loop, Front::Tower];

/// Sends `request` through `front`, reading its `Overrides` from its extensions.
async fn through<R: Clock>(
    front: Front,
    policies: &ClientPolicies<R>,
    host: &Host<R>,
    request: http::Request<String>,
) -> Answered {
    match front {
        Front::Loop => {
            let overrides = request
                .extensions()
                .get::<Overrides>()
                .copied()
                .unwrap_or_default();
            policies.run(request, overrides, |r| host.send(r)).await
        }
        Front::Tower => {
            ClientLayer::new(policies.clone())
                .layer(host.service())
                .oneshot(request)
                .await
        }
    }
}

fn get(uri: &str) -> http::Request<String> {
    http::Request::get(uri).body(String::new()).unwrap()
}

fn with(mut request: http::Request<String>, overrides: Overrides) -> http::Request<String> {
    request.extensions_mut().insert(overrides);
    request
}

fn authority(uri: &str) -> Authority {
    Authority::from_uri(&uri.parse().unwrap()).unwrap()
}

/// The status of the response `answer` holds, if it holds one.
fn status<E>(answer: &Result<http::Response<()>, E>) -> Option<u16> {
    answer.as_ref().ok().map(|r| r.status().as_u16())
}

/// The `(calls, failures)` the host's breaker holds for `key`.
fn host_counts<C: Clock>(policies: &ClientPolicies<C>, key: &Authority) -> Option<(u32, u32)> {
    policies
        .breakers()
        .unwrap()
        .counts(key)
        .map(|c| (c.calls, c.failures))
}

fn refused_with(answer: &Answered) -> Option<Rejected> {
    match answer {
        Err(Error::Inner(Error::Rejected(why))) => Some(*why),
        _ => None,
    }
}

/// Three attempts 10 ms apart (no jitter), 100 ms attempts, a 5 s deadline, no budget; per
/// host a breaker opening on `failures` in a row for 10 s and an AIMD limit from `initial`
/// (at most 4, halving on a drop) instead of the bulkhead.
fn client<C: Clock>(
    rt: &C,
    name: &'static str,
    failures: u32,
    initial: u32,
    ear: &Ear,
) -> ClientPoliciesBuilder<C> {
    ClientPolicies::builder()
        .runtime(rt.clone())
        .name(name)
        .on_event(ear.listener())
        .retry(constant(10 * MS, 3))
        .attempt_timeout(Some(100 * MS))
        .deadline(Some(5 * SEC))
        .retry_budget(None)
        .breaker(Some(
            CircuitBreaker::builder()
                .no_failure_rate()
                .consecutive_failures(failures)
                .break_duration(10 * SEC),
        ))
        .bulkhead(None)
        .adaptive(Some(AdaptiveLimiter::builder(AnyAlgorithm::from(aimd(
            initial, 4, HOUR,
        )))))
}

/// The policies `client` makes with a fresh listener (built while a local recorder listens),
/// that listener, the policies' metrics and a host behind them.
fn served<C: Clock>(
    rt: &C,
    client: impl FnOnce(&Ear) -> ClientPoliciesBuilder<C>,
) -> (Ear, ClientPolicies<C>, Books, Host<C>) {
    let ear = Ear::default();
    let (policies, snapshotter) = recorded(|| client(&ear).build().unwrap());
    (ear, policies, Books::new(snapshotter), Host::new(rt))
}

/// Whether the refusal is retried by the standard table (`CircuitOpen`, `RateLimited`,
/// `BulkheadFull`, `KeysFull`), and after how long (at least the backoff's 10 ms).
fn http_retry(why: Rejected) -> Option<Duration> {
    match why {
        Rejected::CircuitOpen { .. }
        | Rejected::RateLimited { .. }
        | Rejected::BulkheadFull
        | Rejected::KeysFull { .. } => Some(hint_of(why).max(10 * MS)),
        _ => None,
    }
}

// Per front, per kind: attempts, elapsed time and events as the `HttpClassifier` table says
// ("`Refused`: `CircuitOpen`, `RateLimited`, `BulkheadFull`, `KeysFull`: retried after the
// refusal's `retry_after`"; "`Refused` otherwise: `Ignored`, not retried"), every request
// counted `rejected` and heard as `Rejected` with the refusal's kind and the host's key; the
// answer the refusal itself; the host's breaker (one failure opens it) and adaptive limit
// untouched; no rejection counted under the client's name. Then one connection failure:
// counted by both, the breaker opens, the limit halves.
async fn every_kind_below_the_client<R: Runtime>(rt: Clocked<R>) {
    const URI: &str = "http://below.example/items";
    for front in FRONTS {
        let (ear, policies, mut books, host) = served(&rt, |ear| client(&rt, "below", 1, 2, ear));
        let key = authority(URI);
        let (mut retries, mut requests) = (0, 0);
        for why in every_refusal() {
            host.plan(move |_| Said::Refuse(why));
            let start = rt.now();
            let answer = through(front, &policies, &host, get(URI)).await;
            let took = rt.now() - start;
            assert_eq!(refused_with(&answer), Some(why), "{front:?}: {answer:?}");
            let end = format!("below rejected {}", why.kind());
            let heard = ear.take();
            match http_retry(why) {
                Some(delay) => {
                    assert_eq!(host.sent(), 3, "{front:?} {why:?}: retried");
                    assert_eq!(took, 2 * delay, "{front:?} {why:?}");
                    assert_eq!(
                        heard,
                        retried_twice("below", delay, end),
                        "{front:?} {why:?}"
                    );
                    retries += 2;
                }
                None => {
                    assert_eq!(host.sent(), 1, "{front:?} {why:?}: not retried");
                    assert_eq!(took, Duration::ZERO, "{front:?} {why:?}");
                    assert_eq!(heard, [end], "{front:?} {why:?}");
                }
            }
            requests += 1;
            assert!(
                ear.take_keys()
                    .iter()
                    .all(|k| k.as_deref() == Some("http://below.example:80")),
                "{front:?}: every event carries the host"
            );
            let breakers = policies.breakers().unwrap();
            assert_eq!(
                breakers.state(&key),
                Some(State::Closed),
                "{front:?} {why:?}"
            );
            let counts = breakers.counts(&key).map(|c| (c.calls, c.failures));
            assert_eq!(
                counts,
                Some((0, 0)),
                "{front:?} {why:?}: not counted by the breaker"
            );
            let limits = policies.adaptive_limiters().unwrap();
            assert_eq!(
                (limits.limit(&key), limits.in_flight(&key)),
                (Some(2), 0),
                "{front:?} {why:?}: not counted by the adaptive limit (a success would add one)"
            );
        }
        books.read();
        assert_eq!(
            books.calls("http_client", "below", "rejected"),
            requests,
            "{front:?}"
        );
        for outcome in ["success", "failure", "ignored", "timed_out", "cancelled"] {
            assert_eq!(
                books.calls("http_client", "below", outcome),
                0,
                "{front:?} {outcome}"
            );
        }
        assert_eq!(books.retries("http_client", "below"), retries, "{front:?}");
        // "its duration ... waits and retries included": one sample per request, its
        // virtual time.
        let mut took = support::snapshot::samples(
            &books.now,
            "tidewall_call_duration_seconds",
            &[("policy", "http_client"), ("name", "below")],
        );
        took.sort_by(f64::total_cmp);
        let mut expected: Vec<f64> = every_refusal()
            .into_iter()
            .map(|why| http_retry(why).map_or(0.0, |d| 2.0 * d.as_secs_f64()))
            .collect();
        expected.sort_by(f64::total_cmp);
        assert_eq!(took.len(), expected.len(), "{front:?}: {took:?}");
        for (got, want) in took.iter().zip(&expected) {
            assert!(
                (got - want).abs() < 1e-6,
                "{front:?}: {took:?} vs {expected:?}"
            );
        }
        assert_eq!(
            books.rejections_of("below"),
            0,
            "{front:?}: the client's own policies refused nothing"
        );

        // One connection failure: the breaker counts it and opens, the limit halves, and the
        // failure is the answer (a failure that opens the breaker is not retried).
        host.plan(|_| Said::Connect);
        let answer = through(front, &policies, &host, get(URI)).await;
        assert!(
            matches!(answer, Err(Error::Inner(Error::Inner(ref io))) if io.kind() == std::io::ErrorKind::ConnectionRefused),
            "{front:?}: {answer:?}"
        );
        assert_eq!(host.sent(), 1);
        assert_eq!(ear.take(), lines(&["below Failed"]));
        assert_eq!(policies.breakers().unwrap().state(&key), Some(State::Open));
        assert_eq!(policies.adaptive_limiters().unwrap().limit(&key), Some(1));
        books.read();
        assert_eq!(books.calls("http_client", "below", "failure"), 1);
        assert_eq!(books.rejections_of("below"), 0);

        // The host's own breaker now refuses at once: the stack's own refusal, counted once
        // by the breaker (the table's name), not retried, nothing sent.
        host.plan(|_| Said::Status(200));
        let start = rt.now();
        let answer = through(front, &policies, &host, get(URI)).await;
        assert!(
            matches!(answer, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
            "{front:?}: {answer:?}"
        );
        assert_eq!((rt.now(), host.sent()), (start, 0));
        assert_eq!(ear.take(), lines(&["below rejected circuit_open"]));
        books.read();
        assert_eq!(
            books.rejections("breaker", "below", "circuit_open"),
            1,
            "{front:?}"
        );
        assert_eq!(books.rejections_of("below"), 1, "{front:?}");
        assert_eq!(books.calls("http_client", "below", "rejected"), 1);
        assert_eq!(host.live(), 0);
    }
}

#[test]
fn the_http_client_counts_every_refusal_kind_below_as_rejected_and_retries_by_the_table() {
    on_every_runtime!(every_kind_below_the_client);
}

// =============================================================================================
// 10. ClientLayer over real tower policies
// =============================================================================================

// `ClientLayer` over a rate limiter, a bulkhead and a breaker as tower layers between it and
// the client: each of their refusals is counted once, by the policy that made it
// (`tidewall_rejections_total`), the request by how it finally ended; a refusal is retried
// after its hint; the host's breaker and adaptive limit count only what the client answered.
async fn client_layer_over_real_policies<R: Runtime>(rt: Clocked<R>) {
    const URI: &str = "http://edge.example/";
    const TRIP: &str = "http://trip.example/";
    let ear = Ear::default();
    let ((policies, pace, pool, trip), snapshotter) = recorded(|| {
        let policies = client(&rt, "edge", 3, 4, &ear).build().unwrap();
        let pace = pace_limiter(&rt);
        let pool = one_slot(&rt, "pool", 0).build().unwrap();
        let trip = breaker(&rt, "trip", 1)
            .break_duration(50 * MS)
            .build()
            .unwrap();
        (policies, pace, pool, trip)
    });
    let mut books = Books::new(snapshotter);
    let host = Host::new(&rt);
    let to_host = host.service();
    let key = authority(URI);
    let layer = ClientLayer::new(policies.clone());

    // A rate limit below: the second request waits out the limiter's 100 ms hint.
    let paced = layer.layer(admit(&pace, AdmitMode::Reject, &rt).layer(to_host.clone()));
    let first = paced.clone().oneshot(get(URI)).await;
    assert_eq!(status(&first), Some(200));
    let start = rt.now();
    let second = paced.clone().oneshot(get(URI)).await;
    assert_eq!(status(&second), Some(200));
    assert_eq!(rt.now() - start, 100 * MS);
    assert_eq!(host.sent(), 2, "the refused attempt never reached the host");
    assert_eq!(
        ear.take(),
        lines(&["edge Succeeded", "edge retry 1 100ms", "edge Succeeded"])
    );
    books.read();
    assert_eq!(books.rejections("rate", "pace", "rate_limited"), 1);
    assert_eq!(books.n("tidewall_rejections_total", &[]), 1);
    assert_eq!(books.calls("http_client", "edge", "success"), 2);
    assert_eq!(books.calls("http_client", "edge", "rejected"), 0);
    let counts = host_counts(&policies, &key);
    assert_eq!(counts, Some((2, 0)), "the two answers only");

    // A full bulkhead below: three refusals, the request refused.
    let pooled = layer.layer(admit(&pool, AdmitMode::Reject, &rt).layer(to_host.clone()));
    host.plan(|_| Said::Status(200));
    let held = pool.try_acquire_owned().unwrap();
    let start = rt.now();
    let answer = pooled.clone().oneshot(get(URI)).await;
    assert_eq!(refused_with(&answer), Some(Rejected::BulkheadFull));
    assert_eq!(rt.now() - start, 20 * MS);
    assert_eq!(host.sent(), 0);
    assert_eq!(
        ear.take(),
        lines(&[
            "edge retry 1 10ms",
            "edge retry 2 10ms",
            "edge rejected bulkhead_full"
        ])
    );
    // Freed during the second backoff: the third attempt goes through.
    let release = async {
        rt.sleep(15 * MS).await;
        drop(held);
    };
    let start = rt.now();
    let (answer, ()) = futures_util::join!(pooled.clone().oneshot(get(URI)), release);
    assert_eq!(status(&answer), Some(200));
    assert_eq!(rt.now() - start, 20 * MS);
    assert_eq!(
        ear.take(),
        lines(&["edge retry 1 10ms", "edge retry 2 10ms", "edge Succeeded"])
    );
    books.read();
    assert_eq!(books.rejections("bulkhead", "pool", "bulkhead_full"), 5);
    assert_eq!(books.n("tidewall_rejections_total", &[]), 5);
    assert_eq!(books.calls("http_client", "edge", "rejected"), 1);
    assert_eq!(books.calls("http_client", "edge", "success"), 1);
    let counts = host_counts(&policies, &key);
    assert_eq!(counts, Some((3, 0)), "one more answer; no refusal counted");
    assert_eq!(policies.adaptive_limiters().unwrap().limit(&key), Some(4));

    // A breaker below that one connection failure opens for 50 ms: the host's breaker (three
    // in a row open it) and limit count the failure; the retry is refused below and retried
    // after the break's 40 ms left; the probe gets the 200.
    let tripped = layer.layer(BreakerLayer::new(trip.clone()).layer(to_host.clone()));
    host.plan(|n| {
        if n == 1 {
            Said::Connect
        } else {
            Said::Status(200)
        }
    });
    let start = rt.now();
    let answer = tripped.clone().oneshot(get(TRIP)).await;
    assert_eq!(status(&answer), Some(200));
    assert_eq!(rt.now() - start, 50 * MS);
    assert_eq!(host.sent(), 2);
    assert_eq!(
        ear.take(),
        lines(&["edge retry 1 10ms", "edge retry 2 40ms", "edge Succeeded"])
    );
    let trip_key = authority(TRIP);
    let counts = host_counts(&policies, &trip_key);
    assert_eq!(
        counts,
        Some((2, 1)),
        "the failure and the success, not the refusal"
    );
    assert_eq!(
        policies.adaptive_limiters().unwrap().limit(&trip_key),
        Some(3),
        "a drop (4 → 2), then a success that found half of 2 in use (→ 3); the refusal nothing"
    );
    assert_eq!(trip.state(), State::Closed);
    books.read();
    assert_eq!(books.rejections("breaker", "trip", "circuit_open"), 1);
    assert_eq!(books.n("tidewall_rejections_total", &[]), 1);
    assert_eq!(books.calls("breaker", "trip", "failure"), 1);
    assert_eq!(books.calls("breaker", "trip", "success"), 1);
    assert_eq!(books.calls("http_client", "edge", "success"), 1);
    assert_eq!(host.live(), 0);
}

#[test]
fn a_client_layer_over_real_policies_retries_their_refusals_and_counts_each_once() {
    on_every_runtime!(client_layer_over_real_policies);
}

// =============================================================================================
// 11. Hints from below: past the cap, past the deadline; idle gaps of a month
// =============================================================================================

// "at least the server's `Retry-After` between attempts (the sleep capped at 60 s; a
// `Retry-After` that ends past the deadline ends the call at once)", with the refusal's
// `retry_after` as the hint: a 2 min hint under a 1 h deadline sleeps 60 s twice; under a
// 90 s deadline it ends the request at once; a day-long hint under the default 5 s too. A
// month of idleness between requests changes nothing.
async fn hints_from_below<R: Runtime>(rt: Clocked<R>) {
    const URI: &str = "http://hint.example/";
    for front in FRONTS {
        let (ear, policies, mut books, host) = served(&rt, |ear| client(&rt, "hints", 1, 4, ear));
        let key = authority(URI);
        let two_minutes = Rejected::RateLimited {
            retry_after: Duration::from_secs(120),
        };

        host.plan(move |_| Said::Refuse(two_minutes));
        let start = rt.now();
        let long = with(get(URI), Overrides::new().deadline(HOUR));
        let answer = through(front, &policies, &host, long).await;
        assert_eq!(refused_with(&answer), Some(two_minutes), "{front:?}");
        assert_eq!(rt.now() - start, Duration::from_secs(120), "{front:?}");
        assert_eq!(host.sent(), 3);
        assert_eq!(
            ear.take(),
            lines(&[
                "hints retry 1 60s",
                "hints retry 2 60s",
                "hints rejected rate_limited"
            ])
        );

        host.plan(move |_| Said::Refuse(two_minutes));
        let start = rt.now();
        let short = with(get(URI), Overrides::new().deadline(Duration::from_secs(90)));
        let answer = through(front, &policies, &host, short).await;
        assert_eq!(refused_with(&answer), Some(two_minutes), "{front:?}");
        assert_eq!(
            (rt.now() - start, host.sent()),
            (Duration::ZERO, 1),
            "{front:?}"
        );
        assert_eq!(ear.take(), lines(&["hints rejected rate_limited"]));

        let a_day = Rejected::KeysFull {
            retry_after: Some(DAY),
        };
        host.plan(move |_| Said::Refuse(a_day));
        let start = rt.now();
        let answer = through(front, &policies, &host, get(URI)).await;
        assert_eq!(refused_with(&answer), Some(a_day), "{front:?}");
        assert_eq!(
            (rt.now() - start, host.sent()),
            (Duration::ZERO, 1),
            "{front:?}"
        );
        assert_eq!(ear.take(), lines(&["hints rejected keys_full"]));

        for _ in 0..3 {
            rt.sleep(30 * DAY).await;
            host.plan(|n| {
                if n < 3 {
                    Said::Refuse(Rejected::CircuitOpen {
                        retry_after: 15 * MS,
                    })
                } else {
                    Said::Status(200)
                }
            });
            let start = rt.now();
            let answer = through(front, &policies, &host, get(URI)).await;
            assert_eq!(status(&answer), Some(200), "{front:?}");
            assert_eq!(rt.now() - start, 30 * MS, "{front:?}");
            assert_eq!(
                ear.take(),
                lines(&[
                    "hints retry 1 15ms",
                    "hints retry 2 15ms",
                    "hints Succeeded"
                ])
            );
        }
        let breakers = policies.breakers().unwrap();
        assert_eq!(breakers.state(&key), Some(State::Closed));
        assert_eq!(policies.adaptive_limiters().unwrap().limit(&key), Some(4));
        books.read();
        assert_eq!(books.calls("http_client", "hints", "rejected"), 3);
        assert_eq!(books.calls("http_client", "hints", "success"), 3);
        assert_eq!(books.retries("http_client", "hints"), 8);
        assert_eq!(books.rejections_of("hints"), 0);
    }
}

#[test]
fn refusal_hints_from_below_are_capped_held_against_the_deadline_and_survive_idle_months() {
    on_every_runtime!(hints_from_below);
}

// =============================================================================================
// 12. Seeded drops: the HTTP client among refusals from below
// =============================================================================================

async fn drop_after<T>(
    rt: &impl Clock,
    after: Duration,
    fut: impl Future<Output = T>,
) -> Option<T> {
    match select(Box::pin(fut), Box::pin(rt.sleep(after))).await {
        Either::Left((out, _)) => Some(out),
        Either::Right(((), _)) => None,
    }
}

// Forty requests through both fronts, starting at seeded times, each dropped at a seeded
// point or awaited; the host refuses (as a policy below), or answers 200 within the attempt
// timeout. At rest: no slot held in the host's adaptive limit, its limit as built (nothing
// but successes at its most and refusals was ever learnt), its breaker closed with no
// failure; every request counted once: `cancelled` exactly the dropped ones.
async fn http_drops<R: Runtime>(rt: Clocked<R>) {
    const URI: &str = "http://drops.example/";
    for seed in 0..3u64 {
        let (ear, policies, mut books, host) = served(&rt, |ear| client(&rt, "drops", 1, 4, ear));
        host.plan(move |n| {
            let draw = mix(seed.wrapping_mul(0x9E37) ^ u64::from(n));
            match draw % 6 {
                0 | 1 => Said::Refuse(Rejected::BulkheadFull),
                2 => Said::Refuse(Rejected::RateLimited {
                    retry_after: 7 * MS,
                }),
                _ => Said::Slow((draw >> 8) % 60),
            }
        });
        let mut rng = Rng::new(0xD0_0D00 + seed);
        let mut requests = Vec::new();
        for i in 0..40usize {
            let start = ms(rng.below(100));
            let keep = rng.chance(2);
            let after = ms(rng.below(150));
            let front = FRONTS[i % 2];
            let (rt, policies, host) = (rt.clone(), policies.clone(), host.clone());
            requests.push(async move {
                rt.sleep(start).await;
                let request = through(front, &policies, &host, get(URI));
                if keep {
                    Some(request.await)
                } else {
                    drop_after(&rt, after, request).await
                }
            });
        }
        let answers = join_all(requests).await;
        let dropped = answers.iter().filter(|a| a.is_none()).count() as u64;
        for answer in answers.iter().flatten() {
            assert!(
                answer.is_ok()
                    || matches!(
                        answer,
                        Err(Error::Rejected(_)) | Err(Error::Inner(Error::Rejected(_)))
                    ),
                "seed {seed}: {answer:?}"
            );
        }
        rt.sleep(DAY).await;
        let key = authority(URI);
        let limits = policies.adaptive_limiters().unwrap();
        assert_eq!(limits.in_flight(&key), 0, "seed {seed}");
        assert_eq!(
            limits.limit(&key),
            Some(4),
            "seed {seed}: nothing but refusals and successes"
        );
        let breakers = policies.breakers().unwrap();
        assert_eq!(breakers.state(&key), Some(State::Closed), "seed {seed}");
        assert_eq!(
            breakers.counts(&key).map(|c| c.failures),
            Some(0),
            "seed {seed}"
        );
        assert_eq!(host.live(), 0, "seed {seed}");
        books.read();
        let outcome = |o: &str| books.calls("http_client", "drops", o);
        assert_eq!(outcome("cancelled"), dropped, "seed {seed}");
        assert_eq!(
            outcome("success") + outcome("rejected") + outcome("cancelled"),
            40,
            "seed {seed}: each request counted once"
        );
        assert_eq!(
            outcome("failure") + outcome("timed_out") + outcome("ignored"),
            0
        );
        assert_eq!(
            books.n(
                "tidewall_call_duration_seconds",
                &[("policy", "http_client"), ("name", "drops")]
            ),
            40 - dropped,
            "seed {seed}: timed, but for cancelled requests"
        );
        let ends = ear
            .take()
            .into_iter()
            .filter(|l| !l.contains(" retry "))
            .count();
        assert_eq!(ends, 40, "seed {seed}: each request heard ending once");
        // Still usable: a request now is answered at once.
        host.plan(|_| Said::Status(200));
        let answer = through(Front::Tower, &policies, &host, get(URI)).await;
        assert_eq!(status(&answer), Some(200));
    }
}

#[test]
fn http_requests_dropped_at_seeded_points_among_refusals_below_leak_nothing() {
    on_every_runtime!(http_drops);
}

// =============================================================================================
// 13. Seeded drops through AdmitLayer(adaptive) / PipelineLayer / BreakerLayer / AdmitLayer
// =============================================================================================

// The composition under load in each mode of the outer layer, with the breaker below forced
// open and reset at random and the bulkhead below (two slots, no queue) refusing. Calls that
// end are answered `Ok` or refused; at rest every slot is back (`in_flight() == 0`, nothing
// queued, the bulkhead conserved), both limits are as built (nothing but successes at their
// most and refusals), the pipeline's breaker recorded no failure, and the stack still works.
async fn composition_drops<R: Runtime>(rt: Clocked<R>) {
    for (round, mode) in MODES.into_iter().enumerate() {
        let seed = 0x5EED_0000 + round as u64;
        let mut rng = Rng::new(seed);
        let outer = learner(&rt, "drop_outer", 4, 4, DAY)
            .max_queue(64)
            .build()
            .unwrap();
        let inner = learner(&rt, "drop_inner", 6, 6, DAY).build().unwrap();
        let own = breaker(&rt, "drop_own", 1).build().unwrap();
        let below_breaker = CircuitBreaker::builder()
            .runtime(rt.clone())
            .name("drop_below_breaker")
            .consecutive_failures(1)
            .break_duration(30 * MS)
            .build()
            .unwrap();
        let below = Bulkhead::builder(2)
            .runtime(rt.clone())
            .name("drop_below")
            .max_queue(0)
            .build()
            .unwrap();
        let pipeline = pipeline_named(&rt, "drop_mid", 10 * SEC)
            .bulkhead(inner.clone())
            .retry(constant(5 * MS, 4))
            .breaker(own.clone())
            .build()
            .unwrap();
        let script = Script::new(&rt);
        script.plan(|n| Reply::Ok(5 + u64::from(n % 7)));
        let service = ServiceBuilder::new()
            .layer(admit(&outer, mode, &rt))
            .layer(PipelineLayer::new(pipeline))
            .layer(BreakerLayer::new(below_breaker.clone()))
            .layer(admit(&below, AdmitMode::Reject, &rt))
            .service(script.clone());
        let mut calls = Vec::new();
        for i in 0..30u32 {
            let start = ms(rng.below(40));
            let keep = rng.chance(3);
            let after = ms(rng.below(60));
            if rng.chance(6) {
                below_breaker.force_open();
            } else if rng.chance(6) {
                below_breaker.reset();
            }
            let (rt, service) = (rt.clone(), service.clone());
            calls.push(async move {
                rt.sleep(start).await;
                let call = service.oneshot(i);
                if keep {
                    Some(call.await)
                } else {
                    drop_after(&rt, after, call).await
                }
            });
        }
        for answer in join_all(calls).await.into_iter().flatten() {
            assert!(
                matches!(answer, Ok(_) | Err(Error::Rejected(_))),
                "{mode:?}: {answer:?}"
            );
        }
        below_breaker.reset();
        rt.sleep(DAY).await;
        assert_eq!(script.live(), 0, "{mode:?}");
        assert_eq!((outer.in_flight(), outer.queued()), (0, 0), "{mode:?}");
        assert_eq!((inner.in_flight(), inner.queued()), (0, 0), "{mode:?}");
        assert_eq!(
            (outer.limit(), inner.limit()),
            (4, 6),
            "{mode:?}: nothing learnt"
        );
        support::assert_conserved(&below);
        assert_eq!(own.counts().failures, 0, "{mode:?}");
        assert_eq!(own.state(), State::Closed, "{mode:?}");
        assert!(service.clone().oneshot(99).await.is_ok(), "{mode:?}");
    }
}

#[test]
fn calls_dropped_at_seeded_points_through_the_whole_composition_leak_no_slot_or_limit() {
    on_every_runtime!(composition_drops);
}

// =============================================================================================
// 14. A breaker's classifier is not shown refusals from below
// =============================================================================================

// "is recorded as `Ignored` (nothing in the window) and is not shown to the classifier": a
// classifier that judges everything a failure (one opens the breaker) is never consulted for
// any refusal kind, whether the refusal comes from the service or from an admission layer;
// the first response it sees opens the breaker.
async fn classifier_not_consulted<R: Runtime>(rt: Clocked<R>) {
    let guard = breaker(&rt, "judged", 1).build().unwrap();
    let pool = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let consulted = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&consulted);
    let everything_fails = move |_: Result<&u32, &E>| {
        seen.fetch_add(1, SeqCst);
        tidewall::classify::Verdict::Failure
    };
    let script = Script::new(&rt);
    let judged = BreakerLayer::new(guard.clone())
        .classify(everything_fails.clone())
        .layer(script.clone());
    for why in every_refusal() {
        script.plan(move |_| Reply::Refuse(why));
        assert_eq!(
            judged.clone().oneshot(0u32).await,
            Err(Error::Rejected(why))
        );
        assert_eq!(consulted.load(SeqCst), 0, "{why:?} shown to the classifier");
        assert_eq!(guard.state(), State::Closed, "{why:?}");
    }
    let pooled = ServiceBuilder::new()
        .layer(BreakerLayer::new(guard.clone()).classify(everything_fails))
        .layer(admit(&pool, AdmitMode::Reject, &rt))
        .service(script.clone());
    let held = pool.try_acquire_owned().unwrap();
    assert_eq!(
        pooled.clone().oneshot(0u32).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!((consulted.load(SeqCst), guard.state()), (0, State::Closed));
    drop(held);
    script.plan(|_| Reply::Ok(0));
    assert_eq!(pooled.clone().oneshot(0u32).await, Ok(1));
    assert_eq!((consulted.load(SeqCst), guard.state()), (1, State::Open));
}

#[test]
fn a_breakers_classifier_never_judges_a_refusal_from_below() {
    on_every_runtime!(classifier_not_consulted);
}

// =============================================================================================
// 15. BoxError stacks (axum's): refusals boxed as `Rejected`, timeouts as `Elapsed`
// =============================================================================================

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The script behind `BoxError`: a refusal boxed as `Rejected`, its own error as a message.
fn boxed<R: Clock>(
    script: &Script<R>,
) -> impl Service<
    u32,
    Response = u32,
    Error = BoxError,
    Future = impl Future<Output = Result<u32, BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    tower::ServiceExt::<u32>::map_err(script.clone(), |e: E| -> BoxError {
        match e {
            Error::Rejected(why) => Box::new(why),
            Error::Inner(message) => message.into(),
            other => other.to_string().into(),
        }
    })
}

fn boxed_rejection<T>(answer: &Result<T, BoxError>) -> Option<Rejected> {
    answer
        .as_ref()
        .err()
        .and_then(|e| tidewall::tower::cause::<Rejected>(&**e).copied())
}

// The same contracts over `BoxError`: an adaptive layer ignores a boxed refusal (from the
// service or from a bulkhead layer inside), learns a boxed message and a boxed timeout as
// failures and a success with half its limit in use as one more; a breaker ignores boxed
// refusals; the HTTP client reads a boxed refusal as `Refused` and retries it by the table,
// from its `send` or from an `AdmitLayer` between it and the client.
async fn boxed_stacks<R: Runtime>(rt: Clocked<R>) {
    let ear = Ear::default();
    let ((learn, pool, guard, policies), snapshotter) = recorded(|| {
        let learn = learner(&rt, "boxed", 2, 8, DAY).build().unwrap();
        let pool = one_slot(&rt, "boxed_pool", 0).build().unwrap();
        let guard = breaker(&rt, "boxed_guard", 1).build().unwrap();
        let policies = client(&rt, "boxed_client", 1, 2, &ear).build().unwrap();
        (learn, pool, guard, policies)
    });
    let mut books = Books::new(snapshotter);
    let script = Script::new(&rt);
    let service = admit(&learn, AdmitMode::WaitReady, &rt).layer(boxed(&script));
    for why in every_refusal() {
        script.plan(move |_| Reply::Refuse(why));
        let answer = service.clone().oneshot(0u32).await;
        assert_eq!(boxed_rejection(&answer), Some(why));
        assert_eq!(
            learn.limit(),
            2,
            "{why:?} boxed: ignored (a success would add one)"
        );
    }
    let pooled = admit(&learn, AdmitMode::Reject, &rt)
        .layer(admit(&pool, AdmitMode::Reject, &rt).layer(boxed(&script)));
    let held = pool.try_acquire_owned().unwrap();
    let answer = pooled.clone().oneshot(0u32).await;
    assert_eq!(boxed_rejection(&answer), Some(Rejected::BulkheadFull));
    assert_eq!(
        learn.limit(),
        2,
        "a bulkhead's boxed refusal inside: ignored"
    );
    drop(held);
    script.plan(|_| Reply::Fail(0));
    let answer = service.clone().oneshot(0u32).await;
    assert_eq!(answer.map_err(|e| e.to_string()), Err("down".to_owned()));
    assert_eq!(
        learn.limit(),
        1,
        "a boxed error of the service's own: a failure"
    );
    script.plan(|_| Reply::Ok(0));
    assert_eq!(service.clone().oneshot(0u32).await.ok(), Some(1));
    assert_eq!(learn.limit(), 2);
    script.plan(|_| Reply::Ok(50));
    let timed = admit(&learn, AdmitMode::Reject, &rt).layer(
        TimeoutLayer::new(10 * MS)
            .runtime(rt.clone())
            .layer(boxed(&script)),
    );
    let answer = timed.oneshot(0u32).await;
    assert!(
        answer
            .as_ref()
            .err()
            .and_then(|e| tidewall::tower::cause::<tidewall::time::Elapsed>(&**e))
            .is_some(),
        "{:?}",
        answer.map_err(|e| e.to_string())
    );
    assert_eq!(learn.limit(), 1, "a boxed timeout inside: a failure");
    assert_eq!(learn.in_flight(), 0);

    // A breaker over boxed refusals.
    let guarded = BreakerLayer::new(guard.clone()).layer(boxed(&script));
    for why in every_refusal() {
        script.plan(move |_| Reply::Refuse(why));
        let answer = guarded.clone().oneshot(0u32).await;
        assert_eq!(boxed_rejection(&answer), Some(why));
        assert_eq!(guard.state(), State::Closed, "{why:?}");
    }
    assert_eq!((guard.counts().calls, guard.counts().failures), (0, 0));

    // The HTTP client's loop, over a send whose error is a `BoxError`.
    const URI: &str = "http://boxed.example/";
    let key = authority(URI);
    for (why, sends) in [(Rejected::BulkheadFull, 3), (Rejected::BudgetExhausted, 1)] {
        let sent = AtomicU32::new(0);
        let start = rt.now();
        let answer = policies
            .run(get(URI), Overrides::new(), |_request| {
                sent.fetch_add(1, SeqCst);
                async move { Err::<http::Response<()>, BoxError>(Box::new(why)) }
            })
            .await;
        let refused = match &answer {
            Err(Error::Inner(e)) => tidewall::tower::cause::<Rejected>(&**e).copied(),
            _ => None,
        };
        assert_eq!(
            refused,
            Some(why),
            "{:?}",
            answer.map(|_| ()).map_err(|e| e.to_string())
        );
        assert_eq!(sent.load(SeqCst), sends, "{why:?}");
        assert_eq!(rt.now() - start, 10 * MS * (sends - 1), "{why:?}");
    }
    // The tower front, over a bulkhead layer in a `BoxError` stack.
    let host = Host::new(&rt);
    let to_host = {
        let host = host.clone();
        tower::service_fn(move |r: http::Request<String>| {
            let sent = host.send(r);
            async move { sent.await.map_err(|e| -> BoxError { Box::new(e) }) }
        })
    };
    let stack = ClientLayer::new(policies.clone())
        .layer(admit(&pool, AdmitMode::Reject, &rt).layer(to_host));
    let held = pool.try_acquire_owned().unwrap();
    let start = rt.now();
    let answer = stack.clone().oneshot(get(URI)).await;
    let refused = match &answer {
        Err(Error::Inner(e)) => tidewall::tower::cause::<Rejected>(&**e).copied(),
        _ => None,
    };
    assert_eq!(refused, Some(Rejected::BulkheadFull));
    assert_eq!((rt.now() - start, host.sent()), (20 * MS, 0));
    drop(held);
    let counts = host_counts(&policies, &key);
    assert_eq!(counts, Some((0, 0)));
    assert_eq!(
        policies.adaptive_limiters().unwrap().limit(&key),
        Some(2),
        "boxed refusals: not counted by the host's limit (a success would add one)"
    );
    ear.take();
    books.read();
    assert_eq!(books.calls("http_client", "boxed_client", "rejected"), 3);
    assert_eq!(books.retries("http_client", "boxed_client"), 4);
    assert_eq!(
        books.rejections("bulkhead", "boxed_pool", "bulkhead_full"),
        4
    );
    assert_eq!(books.rejections_of("boxed_client"), 0);
    assert_eq!(books.rejections_of("boxed"), 0);
    assert_eq!(books.calls("breaker", "boxed_guard", "failure"), 0);
}

#[test]
fn box_error_stacks_keep_every_refusal_from_below_a_refusal() {
    on_every_runtime!(boxed_stacks);
}

// =============================================================================================
// 16. The host's half-open breaker: a probe refused below gives its slot back
// =============================================================================================

// The host's breaker opened by a connection failure, half-open after its 10 s break, one
// probe: the probe attempt refused below (not counted by the breaker) must leave the probe to
// be had, so the retry is the probe and closes it. A refusal that is not retried leaves the
// breaker half-open, and the next request probes.
async fn half_open_host<R: Runtime>(rt: Clocked<R>) {
    const URI: &str = "http://probe.example/";
    for front in FRONTS {
        let ear = Ear::default();
        let policies = client(&rt, "probe", 1, 4, &ear)
            .breaker(Some(
                CircuitBreaker::builder()
                    .no_failure_rate()
                    .consecutive_failures(1)
                    .break_duration(10 * SEC)
                    .half_open_probes(1),
            ))
            .build()
            .unwrap();
        let host = Host::new(&rt);
        let key = authority(URI);
        let breakers = policies.breakers().unwrap();

        for (why, retried) in [
            (Rejected::BulkheadFull, true),
            (
                Rejected::RateLimited {
                    retry_after: 20 * MS,
                },
                true,
            ),
            (Rejected::DeadlineExceeded, false),
            (Rejected::BudgetExhausted, false),
        ] {
            host.plan(|_| Said::Connect);
            let _ = through(front, &policies, &host, get(URI)).await;
            assert_eq!(breakers.state(&key), Some(State::Open), "{front:?} {why:?}");
            rt.sleep(10 * SEC).await;
            ear.take();
            host.plan(move |n| {
                if n == 1 {
                    Said::Refuse(why)
                } else {
                    Said::Status(200)
                }
            });
            let start = rt.now();
            let answer = through(front, &policies, &host, get(URI)).await;
            if retried {
                let delay = http_retry(why).unwrap();
                assert_eq!(
                    status(&answer),
                    Some(200),
                    "{front:?} {why:?}: the retry was the probe: {answer:?}"
                );
                assert_eq!(
                    (rt.now() - start, host.sent()),
                    (delay, 2),
                    "{front:?} {why:?}"
                );
                assert_eq!(
                    ear.take(),
                    [
                        format!("probe retry 1 {delay:?}"),
                        "probe Succeeded".to_owned()
                    ]
                );
            } else {
                assert_eq!(refused_with(&answer), Some(why), "{front:?}: {answer:?}");
                assert_eq!(host.sent(), 1);
                assert_eq!(
                    breakers.state(&key),
                    Some(State::HalfOpen),
                    "{front:?} {why:?}: the probe refused below counts nothing"
                );
                let answer = through(front, &policies, &host, get(URI)).await;
                assert_eq!(
                    status(&answer),
                    Some(200),
                    "{front:?} {why:?}: the next request is the probe: {answer:?}"
                );
            }
            assert_eq!(
                breakers.state(&key),
                Some(State::Closed),
                "{front:?} {why:?}"
            );
        }
    }
}

#[test]
fn a_half_open_host_probe_refused_below_gives_its_slot_back() {
    on_every_runtime!(half_open_host);
}

// =============================================================================================
// 17. WaitReady over a breaker that waits in poll_ready and gives up
// =============================================================================================

// An adaptive layer in `WaitReady` (a 10 ms AIMD timeout, limit 2 of 8) over a breaker that
// waits in `poll_ready` at most 30 ms, open for a second: the breaker gives up at once (its
// hint ends past the wait), `poll_ready` reports ready, the call fails with its refusal, and
// the adaptive layer, which holds a slot from its own `poll_ready`, ignores it: the limit
// stays 2 (a success with one of two in flight would add one, a failure halve it) and the
// slot is back.
async fn wait_ready_over_waiting_breaker<R: Runtime>(rt: Clocked<R>) {
    let learn = learner(&rt, "ready", 2, 8, 10 * MS).build().unwrap();
    let guard = breaker(&rt, "waits", 1)
        .break_duration(SEC)
        .build()
        .unwrap();
    let script = Script::new(&rt);
    let service = ServiceBuilder::new()
        .layer(admit(&learn, AdmitMode::WaitReady, &rt))
        .layer(BreakerLayer::new(guard.clone()).wait_in_ready(30 * MS))
        .service(script.clone());
    guard.try_acquire().unwrap().failure();
    for _ in 0..3 {
        let start = rt.now();
        assert!(matches!(
            service.clone().oneshot(0u32).await,
            Err(Error::Rejected(Rejected::CircuitOpen { .. }))
        ));
        assert_eq!(rt.now(), start, "given up at once");
        assert_eq!((learn.limit(), learn.in_flight()), (2, 0));
        rt.sleep(100 * MS).await;
    }
    assert_eq!(script.calls(), 0);
}

#[test]
fn a_wait_ready_adaptive_layer_ignores_a_breaker_that_gave_up_waiting_below_it() {
    on_every_runtime!(wait_ready_over_waiting_breaker);
}

// =============================================================================================
// 18. A refusal whose hint ends past the deadline, after a retried response
// =============================================================================================

// `ClientPolicies::run`: "When a retry would wait past the deadline (the server's
// `Retry-After` ends after it), the answer comes at once: the latest response an attempt got
// (a 503 kept past a later error or timeout ...)", and the table's hint for a refusal is "the
// refusal's `retry_after`". A 503, then a refusal from below asking for an hour under a 5 s
// deadline: the 503 comes back at once, as a failure (the classifier's verdict on it); the
// host's breaker counted the 503 only.
async fn a_503_kept_past_a_refusal<R: Runtime>(rt: Clocked<R>) {
    const URI: &str = "http://kept.example/";
    for front in FRONTS {
        let (ear, policies, mut books, host) = served(&rt, |ear| client(&rt, "kept", 3, 4, ear));
        host.plan(|n| {
            if n == 1 {
                Said::Status(503)
            } else {
                Said::Refuse(Rejected::RateLimited { retry_after: HOUR })
            }
        });
        let start = rt.now();
        let answer = through(front, &policies, &host, get(URI)).await;
        assert_eq!(
            status(&answer),
            Some(503),
            "{front:?}: the latest response, not the refusal: {answer:?}"
        );
        assert_eq!((rt.now() - start, host.sent()), (10 * MS, 2), "{front:?}");
        assert_eq!(
            ear.take(),
            lines(&["kept retry 1 10ms", "kept Failed"]),
            "{front:?}"
        );
        let key = authority(URI);
        let counts = host_counts(&policies, &key);
        assert_eq!(counts, Some((1, 1)), "{front:?}: the 503 only");
        books.read();
        assert_eq!(
            books.calls("http_client", "kept", "failure"),
            1,
            "{front:?}"
        );
        assert_eq!(
            books.calls("http_client", "kept", "rejected"),
            0,
            "{front:?}"
        );
    }
}

#[test]
fn a_refusal_below_whose_hint_ends_past_the_deadline_returns_the_earlier_503_at_once() {
    on_every_runtime!(a_503_kept_past_a_refusal);
}

// The pipeline's counterpart, under an adaptive layer: "When the deadline ends a call (cuts
// its attempt, or leaves no time for the next) after an attempt got a value that was retried
// ..., the answer is `Ok` with the latest such value ...; the call counts as a failure in the
// pipeline's metrics and for its admission stages", and a refusal below is "retried after the
// refusal's `retry_after`" ("a retry whose whole hint ends past the deadline is not made (the
// call ends at once)"). The outer layer sees a response: a success.
async fn a_value_kept_past_a_refusal<R: Runtime>(rt: Clocked<R>) {
    let ear = Ear::default();
    let ((outer, inner, pipeline), snapshotter) = recorded(|| {
        let outer = learner(&rt, "value_outer", 2, 8, DAY).build().unwrap();
        let inner = learner(&rt, "value_inner", 8, 8, DAY).build().unwrap();
        let pipeline = pipeline_named(&rt, "value", SEC)
            .on_event(ear.listener())
            .bulkhead(inner.clone())
            .retry(constant(10 * MS, 3))
            .classify(|r: Result<&u32, &E>| match r {
                Ok(1) => tidewall::classify::Verdict::RetryableFailure,
                Ok(_) => tidewall::classify::Verdict::Success,
                Err(_) => tidewall::classify::Verdict::RetryableFailure,
            })
            .build()
            .unwrap();
        (outer, inner, pipeline)
    });
    let mut books = Books::new(snapshotter);
    let script = Script::new(&rt);
    script.plan(|n| {
        if n == 1 {
            Reply::Ok(0)
        } else {
            Reply::Refuse(Rejected::CircuitOpen { retry_after: HOUR })
        }
    });
    let service = ServiceBuilder::new()
        .layer(admit(&outer, AdmitMode::Reject, &rt))
        .layer(PipelineLayer::new(pipeline))
        .service(script.clone());
    let start = rt.now();
    assert_eq!(
        service.oneshot(0u32).await,
        Ok(1),
        "the retried value, not the refusal"
    );
    assert_eq!((rt.now() - start, script.calls()), (10 * MS, 2));
    assert_eq!(ear.take(), lines(&["value retry 1 10ms", "value Failed"]));
    assert_eq!(
        inner.limit(),
        4,
        "a failure for the pipeline's admission stage"
    );
    assert_eq!(
        outer.limit(),
        3,
        "a response for the outer layer (one of two in flight)"
    );
    books.read();
    assert_eq!(books.calls("pipeline", "value", "failure"), 1);
    assert_eq!(books.calls("pipeline", "value", "rejected"), 0);
}

#[test]
fn a_refusal_below_a_pipeline_whose_hint_ends_past_the_deadline_returns_the_retried_value() {
    on_every_runtime!(a_value_kept_past_a_refusal);
}

// =============================================================================================
// 19. Requests the client sends once
// =============================================================================================

// "A request whose method is not idempotent (POST, PATCH, without an `Idempotency-Key`), or
// whose body cannot be copied ..., is never retried: it is sent once"; `Overrides::no_retry`
// and `max_attempts(1)` too. Refused below, each is answered with the refusal after one
// send, counted `rejected`; a POST with an `Idempotency-Key`, or marked idempotent, is
// retried by the table.
async fn sent_once<R: Runtime>(rt: Clocked<R>) {
    const URI: &str = "http://once.example/";
    let why = Rejected::BulkheadFull;
    for front in FRONTS {
        let (ear, policies, mut books, host) =
            served(&rt, |ear| client(&rt, "sent_once", 3, 2, ear));
        let post = || http::Request::post(URI).body("charge".to_owned()).unwrap();
        let keyed = || {
            http::Request::post(URI)
                .header("idempotency-key", "k-1")
                .body("charge".to_owned())
                .unwrap()
        };
        let cases: [(&str, http::Request<String>, u32); 5] = [
            ("post", post(), 1),
            ("no_retry", with(get(URI), Overrides::new().no_retry()), 1),
            (
                "max_attempts(1)",
                with(
                    get(URI),
                    Overrides::new().max_attempts(std::num::NonZeroU32::MIN),
                ),
                1,
            ),
            ("keyed post", keyed(), 3),
            (
                "idempotent post",
                with(post(), Overrides::new().idempotent()),
                3,
            ),
        ];
        for (what, request, sends) in cases {
            host.plan(move |_| Said::Refuse(why));
            let start = rt.now();
            let answer = through(front, &policies, &host, request).await;
            assert_eq!(
                refused_with(&answer),
                Some(why),
                "{front:?} {what}: {answer:?}"
            );
            assert_eq!(host.sent(), sends, "{front:?} {what}");
            assert_eq!(rt.now() - start, 10 * MS * (sends - 1), "{front:?} {what}");
            let heard = ear.take();
            assert_eq!(
                heard.last().map(String::as_str),
                Some("sent_once rejected bulkhead_full")
            );
            assert_eq!(heard.len(), sends as usize, "{front:?} {what}: {heard:?}");
        }
        let key = authority(URI);
        let counts = host_counts(&policies, &key);
        assert_eq!(counts, Some((0, 0)), "{front:?}");
        assert_eq!(
            policies.adaptive_limiters().unwrap().limit(&key),
            Some(2),
            "{front:?}"
        );
        books.read();
        assert_eq!(
            books.calls("http_client", "sent_once", "rejected"),
            5,
            "{front:?}"
        );
        assert_eq!(books.retries("http_client", "sent_once"), 4, "{front:?}");
    }
}

#[test]
fn requests_sent_once_are_answered_with_a_refusal_below_after_one_send() {
    on_every_runtime!(sent_once);
}

// =============================================================================================
// 20. Admission below that waits: a slow attempt, not a refusal
// =============================================================================================

// `ClientLayer`: "Each attempt waits for the readiness of its own clone of the client after
// its per-authority admission, as part of the send: under the attempt timeout ... So a client
// that queues in `poll_ready` ... shows as a slower host". A bulkhead layer in `WaitReady`
// below the client layer, its slot held: when the bulkhead's own `max_wait` (30 ms) ends the
// wait first, the attempt is refused (retried, not counted); when the attempt timeout (100 ms)
// ends it first, the attempt timed out: a failure for the host's breaker and limit. Either
// way nobody is left in the bulkhead's queue.
async fn waiting_below_the_client<R: Runtime>(rt: Clocked<R>) {
    const URI: &str = "http://queue.example/";
    let ear = Ear::default();
    let ((policies, short, long), snapshotter) = recorded(|| {
        let policies = client(&rt, "queued", 3, 2, &ear).build().unwrap();
        let short = one_slot(&rt, "short_wait", 4)
            .max_wait(30 * MS)
            .build()
            .unwrap();
        let long = one_slot(&rt, "long_wait", 4).max_wait(SEC).build().unwrap();
        (policies, short, long)
    });
    let mut books = Books::new(snapshotter);
    let host = Host::new(&rt);
    let to_host = host.service();
    let key = authority(URI);
    let layer = ClientLayer::new(policies.clone());

    let refusing = layer.layer(admit(&short, AdmitMode::WaitReady, &rt).layer(to_host.clone()));
    let held = short.try_acquire_owned().unwrap();
    let start = rt.now();
    let answer = refusing.clone().oneshot(get(URI)).await;
    assert_eq!(
        refused_with(&answer),
        Some(Rejected::BulkheadFull),
        "{answer:?}"
    );
    assert_eq!(
        rt.now() - start,
        110 * MS,
        "three 30 ms waits, two 10 ms backoffs"
    );
    assert_eq!(host.sent(), 0);
    assert_eq!(
        ear.take(),
        lines(&[
            "queued retry 1 10ms",
            "queued retry 2 10ms",
            "queued rejected bulkhead_full"
        ])
    );
    assert_eq!(short.queued(), 0);
    let counts = host_counts(&policies, &key);
    assert_eq!(counts, Some((0, 0)), "refusals below: not counted");
    assert_eq!(policies.adaptive_limiters().unwrap().limit(&key), Some(2));
    drop(held);

    let slow = layer.layer(admit(&long, AdmitMode::WaitReady, &rt).layer(to_host.clone()));
    let held = long.try_acquire_owned().unwrap();
    let start = rt.now();
    let answer = slow.clone().oneshot(get(URI)).await;
    assert!(matches!(answer, Err(Error::TimedOut)), "{answer:?}");
    assert_eq!(
        rt.now() - start,
        320 * MS,
        "three 100 ms attempts, two 10 ms backoffs"
    );
    assert_eq!(
        ear.take(),
        lines(&[
            "queued retry 1 10ms",
            "queued retry 2 10ms",
            "queued TimedOut"
        ])
    );
    assert_eq!(long.queued(), 0, "each timed-out wait left the queue");
    let breakers = policies.breakers().unwrap();
    let counts = breakers.counts(&key).map(|c| (c.calls, c.failures));
    assert_eq!(counts, Some((3, 3)), "the waits were the host's slowness");
    assert_eq!(breakers.state(&key), Some(State::Open));
    assert_eq!(policies.adaptive_limiters().unwrap().limit(&key), Some(1));
    drop(held);
    assert_eq!((long.in_flight(), short.in_flight()), (0, 0));
    books.read();
    assert_eq!(
        books.rejections("bulkhead", "short_wait", "bulkhead_full"),
        3
    );
    assert_eq!(
        books.rejections_of("long_wait"),
        0,
        "a wait cut by the caller is no refusal"
    );
    assert_eq!(books.calls("http_client", "queued", "rejected"), 1);
    assert_eq!(books.calls("http_client", "queued", "timed_out"), 1);
}

#[test]
fn admission_below_the_client_that_waits_is_slowness_unless_it_refuses() {
    on_every_runtime!(waiting_below_the_client);
}

// `PipelineLayer`: "a layer below that waits in the call (an `AdmitLayer` in `WaitCall` or
// `WaitReady` mode): its wait is part of the attempt, and an attempt timeout or the deadline
// that ends it ends a slow attempt (a failure), not a refusal." Under an adaptive layer: the
// attempt timeouts are failures for everyone; the deadline's cut is `DeadlineExceeded`,
// which the outer layer ignores while the pipeline's stage learns a failure.
async fn waiting_below_a_pipeline<R: Runtime>(rt: Clocked<R>) {
    let ((outer, inner, own, gate, timed, cut), snapshotter) = recorded(|| {
        let outer = learner(&rt, "wait_outer", 2, 8, DAY).build().unwrap();
        let inner = learner(&rt, "wait_inner", 8, 8, DAY).build().unwrap();
        let own = breaker(&rt, "wait_own", 10).build().unwrap();
        let gate = one_slot(&rt, "wait_gate", 4)
            .max_wait(None)
            .build()
            .unwrap();
        let timed = staged(&rt, "wait_timed", 10 * SEC, &inner, &own)
            .attempt_timeout(50 * MS)
            .build()
            .unwrap();
        let cut = staged(&rt, "wait_cut", 100 * MS, &inner, &own)
            .build()
            .unwrap();
        (outer, inner, own, gate, timed, cut)
    });
    let mut books = Books::new(snapshotter);
    let script = Script::new(&rt);
    let below = admit(&gate, AdmitMode::WaitCall, &rt);
    let held = gate.try_acquire_owned().unwrap();

    let slow = ServiceBuilder::new()
        .layer(admit(&outer, AdmitMode::Reject, &rt))
        .layer(PipelineLayer::new(timed))
        .layer(below.clone())
        .service(script.clone());
    let start = rt.now();
    assert_eq!(slow.oneshot(0u32).await, Err(Error::TimedOut));
    assert_eq!(rt.now() - start, 170 * MS);
    assert_eq!(script.calls(), 0);
    assert_eq!((own.counts().calls, own.counts().failures), (3, 3));
    assert_eq!((outer.limit(), inner.limit()), (1, 4));

    let deadline = ServiceBuilder::new()
        .layer(admit(&outer, AdmitMode::Reject, &rt))
        .layer(PipelineLayer::new(cut))
        .layer(below)
        .service(script.clone());
    let start = rt.now();
    assert_eq!(
        deadline.oneshot(0u32).await,
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    assert_eq!(rt.now() - start, 100 * MS);
    assert_eq!(
        (own.counts().calls, own.counts().failures),
        (3, 3),
        "the deadline's cut records nothing"
    );
    assert_eq!(
        outer.limit(),
        1,
        "the outer layer ignores the DeadlineExceeded"
    );
    assert_eq!(
        inner.limit(),
        2,
        "the deadline ran out during the call: a failure"
    );
    assert_eq!((gate.queued(), gate.in_flight()), (0, 1));
    drop(held);
    books.read();
    assert_eq!(books.calls("pipeline", "wait_timed", "timed_out"), 1);
    assert_eq!(books.calls("pipeline", "wait_cut", "rejected"), 1);
    assert_eq!(books.rejections_of("wait_gate"), 0);
}

#[test]
fn admission_below_a_pipeline_that_waits_is_a_slow_attempt_not_a_refusal() {
    on_every_runtime!(waiting_below_a_pipeline);
}

// =============================================================================================
// 21. The client's own `KeysFull` is final; one from below is retried
// =============================================================================================

// "A table full of authorities it may not forget refuses a new one with
// `Rejected::KeysFull`", and "A refusal by any of them ends the request at once with that
// refusal, not retried": the stack's own `KeysFull` (one authority at most, held by a host
// with failures in its breaker's window) is answered at once, nothing sent, counted by the
// table (`keyed_breaker`); a `KeysFull` from below the stack is retried by the table.
async fn own_keys_full_versus_below<R: Runtime>(rt: Clocked<R>) {
    const HELD: &str = "http://held.example/";
    const NEW: &str = "http://new.example/";
    for front in FRONTS {
        let (ear, policies, mut books, host) = served(&rt, |ear| {
            client(&rt, "tables", 5, 2, ear)
                .max_authorities(1)
                .idle_ttl(HOUR)
        });
        host.plan(|_| Said::Connect);
        let _ = through(front, &policies, &host, get(HELD)).await;
        assert_eq!(host.sent(), 3, "{front:?}: a connection failure is retried");
        ear.take();

        host.plan(|_| Said::Status(200));
        let start = rt.now();
        let answer = through(front, &policies, &host, get(NEW)).await;
        assert!(
            matches!(answer, Err(Error::Rejected(Rejected::KeysFull { .. }))),
            "{front:?}: the stack's own refusal: {answer:?}"
        );
        assert_eq!(
            (rt.now(), host.sent()),
            (start, 0),
            "{front:?}: at once, nothing sent"
        );
        assert_eq!(ear.take(), lines(&["tables rejected keys_full"]));

        let below = Rejected::KeysFull { retry_after: None };
        host.plan(move |_| Said::Refuse(below));
        let start = rt.now();
        let answer = through(front, &policies, &host, get(HELD)).await;
        assert_eq!(refused_with(&answer), Some(below), "{front:?}: {answer:?}");
        assert_eq!((rt.now() - start, host.sent()), (20 * MS, 3), "{front:?}");
        assert_eq!(
            ear.take(),
            lines(&[
                "tables retry 1 10ms",
                "tables retry 2 10ms",
                "tables rejected keys_full"
            ])
        );
        books.read();
        assert_eq!(
            books.rejections("keyed_breaker", "tables", "keys_full"),
            1,
            "{front:?}: the table's own refusal, once"
        );
        assert_eq!(books.rejections_of("tables"), 1, "{front:?}");
        assert_eq!(
            books.calls("http_client", "tables", "rejected"),
            2,
            "{front:?}"
        );
    }
}

#[test]
fn the_clients_own_keys_full_is_final_but_one_from_below_is_retried() {
    on_every_runtime!(own_keys_full_versus_below);
}

// =============================================================================================
// 22. A spent retry budget after a refusal from below
// =============================================================================================

// A budget with nothing to grant: a refusal from below the table would retry is not retried
// ("each retry the authority's budget refused": `BudgetExhausted`), and the answer is the
// refusal, counted `rejected`, with one `tidewall_retry_budget_exhausted_total`.
async fn spent_budget<R: Runtime>(rt: Clocked<R>) {
    const URI: &str = "http://frugal.example/";
    for front in FRONTS {
        let none_left = tidewall::budget::RetryBudgetPolicy::builder()
            .ratio(0.0)
            .min_per_second(0)
            .build()
            .unwrap();
        let (ear, policies, mut books, host) = served(&rt, |ear| {
            client(&rt, "frugal", 3, 2, ear).retry_budget(Some(none_left))
        });
        let why = Rejected::RateLimited {
            retry_after: 20 * MS,
        };
        host.plan(move |_| Said::Refuse(why));
        let start = rt.now();
        let answer = through(front, &policies, &host, get(URI)).await;
        assert_eq!(refused_with(&answer), Some(why), "{front:?}: {answer:?}");
        assert_eq!((rt.now(), host.sent()), (start, 1), "{front:?}");
        assert_eq!(
            ear.take(),
            lines(&["frugal BudgetExhausted", "frugal rejected rate_limited"])
        );
        books.read();
        assert_eq!(books.calls("http_client", "frugal", "rejected"), 1);
        assert_eq!(
            books.n(
                "tidewall_retry_budget_exhausted_total",
                &[("policy", "http_client"), ("name", "frugal")]
            ),
            1
        );
        assert_eq!(books.rejections_of("frugal"), 0);
        let key = authority(URI);
        assert_eq!(policies.adaptive_limiters().unwrap().limit(&key), Some(2));
    }
}

#[test]
fn a_refusal_below_whose_retry_the_budget_refuses_is_the_answer_counted_rejected() {
    on_every_runtime!(spent_budget);
}

// =============================================================================================
// 23. Stages chosen at run time: `Either` and `Option` around the adaptive limiter
// =============================================================================================

// "Each call goes to the stage inside, and so does its outcome" (`Either`), and `Option` of
// any stage: under `AdmitLayer`, a refusal inside is ignored (the limit of 2 stays; a success
// with one of two in flight would add one), a failure halves it.
async fn stages_chosen_at_run_time<R: Runtime>(rt: Clocked<R>) {
    use tidewall::admission::Either as Stage;
    let script = Script::new(&rt);
    for (i, mode) in MODES.into_iter().enumerate() {
        let either = learner(&rt, "either", 2, 8, DAY).build().unwrap();
        let option = learner(&rt, "option", 2, 8, DAY).build().unwrap();
        let right = AdmitLayer::new(
            Stage::<Bulkhead<Clocked<R>>, _>::Right(either.clone()),
            mode,
        )
        .runtime(rt.clone())
        .layer(script.clone());
        let some = AdmitLayer::new(Some(option.clone()), mode)
            .runtime(rt.clone())
            .layer(script.clone());
        for why in every_refusal() {
            script.plan(move |_| Reply::Refuse(why));
            assert_eq!(right.clone().oneshot(i).await, Err(Error::Rejected(why)));
            assert_eq!(some.clone().oneshot(i).await, Err(Error::Rejected(why)));
            assert_eq!((either.limit(), option.limit()), (2, 2), "{mode:?} {why:?}");
        }
        script.plan(|_| Reply::Fail(0));
        assert_eq!(right.clone().oneshot(i).await, Err(Error::Inner("down")));
        assert_eq!(some.clone().oneshot(i).await, Err(Error::Inner("down")));
        assert_eq!(
            (either.limit(), option.limit()),
            (1, 1),
            "{mode:?}: failures learnt"
        );
        assert_eq!((either.in_flight(), option.in_flight()), (0, 0));
    }
}

#[test]
fn either_and_option_stages_pass_outcomes_on_and_ignore_refusals_inside() {
    on_every_runtime!(stages_chosen_at_run_time);
}
