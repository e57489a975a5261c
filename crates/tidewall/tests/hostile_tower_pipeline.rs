#![cfg(all(feature = "tower", feature = "toml"))]
//! Hostile black-box tests of `PipelineLayer` (a `Pipeline` or a configured `LivePipeline` as
//! one tower layer) and `HedgeLayer::live`, written from the rustdoc alone: attempts on clones
//! of the request and the service (polled ready inside the attempt, after admission, under the
//! attempt timeout, timed as latency), an always-ready service, the stack's one error type
//! (typed, boxed, a user enum), composition with every other Tidewall layer above and below,
//! nested pipelines, deadlines against attempt timeouts, retry budgets, idle gaps of days,
//! extreme settings, capacity conservation after seeded random cancellation, and reloads
//! (sections added and removed, racing running calls from other threads). Virtual time only,
//! on every runtime.

mod common;

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::rng::Rng;
use tidewall::adaptive::{AdaptiveLimiter, Aimd};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::ErrorsWhere;
use tidewall::config::{Config, Registry};
use tidewall::hedge::Hedge;
use tidewall::pipeline::Pipeline;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::telemetry::Event;
use tidewall::testing::Clocked;
use tidewall::time::{Elapsed, FutureExt as _};
use tidewall::tower::{
    AdmitLayer, AdmitMode, BreakerLayer, HedgeLayer, PipelineLayer, PolicyError, RetryLayer,
    TimeoutLayer, cause,
};
use tidewall::{Backoff, Error, Jitter, Rejected};
use tower::util::BoxCloneService;
use tower::{BoxError, ServiceBuilder, ServiceExt as _};
use tower_layer::Layer;
use tower_service::Service;

const MS: Duration = Duration::from_millis(1);
const DAY: Duration = Duration::from_secs(86_400);

type E = Error<&'static str>;

fn config(text: &str) -> Config {
    Config::from_toml(text).expect("a valid configuration")
}

fn constant(delay: Duration, attempts: u32) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

/// A pipeline of a retry over a breaker, on virtual time.
type Retrying<R> =
    Pipeline<Clocked<R>, (), (), tidewall::pipeline::RetryStage, CircuitBreaker<Clocked<R>>>;

/// Three attempts 1 ms apart over a breaker that counts every outcome and never opens (100
/// failures in a row): the breaker, and the pipeline.
fn counting_retries<R: Runtime>(rt: &Clocked<R>) -> (CircuitBreaker<Clocked<R>>, Retrying<R>) {
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(100)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(MS, 3))
        .breaker(breaker.clone())
        .build()
        .unwrap();
    (breaker, pipeline)
}

fn down(_: u32) -> Result<u32, &'static str> {
    Err("down")
}

fn fine(n: u32) -> Result<u32, &'static str> {
    Ok(n)
}

fn one(_: u32) -> Result<u32, &'static str> {
    Ok(1)
}

fn busy_only(error: &E) -> bool {
    error.inner() == Some(&"busy")
}

fn overloaded_only(error: &E) -> bool {
    error.inner() == Some(&"overloaded")
}

fn boxed(e: E) -> BoxError {
    BoxError::from(e.into_inner().unwrap_or("not the service's"))
}

fn ms_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap()
}

// --- requests that count their clones ------------------------------------------------------

#[derive(Debug)]
struct Req {
    id: u32,
    clones: Arc<AtomicU32>,
}

impl Req {
    fn new(id: u32) -> Self {
        Self {
            id,
            clones: Arc::new(AtomicU32::new(0)),
        }
    }

    fn clones(&self) -> u32 {
        self.clones.load(SeqCst)
    }
}

impl Clone for Req {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, SeqCst);
        Self {
            id: self.id,
            clones: Arc::clone(&self.clones),
        }
    }
}

// --- a scripted service: counts its clones, readiness polls, calls and live futures --------

#[derive(Default)]
struct Tally {
    calls: AtomicU32,
    readies: AtomicU32,
    clones: AtomicU32,
    live: AtomicUsize,
    peak: AtomicUsize,
    unready_calls: AtomicU32,
    per_id: Mutex<HashMap<u32, u32>>,
}

impl Tally {
    fn calls(&self) -> u32 {
        self.calls.load(SeqCst)
    }
    fn readies(&self) -> u32 {
        self.readies.load(SeqCst)
    }
    fn clones(&self) -> u32 {
        self.clones.load(SeqCst)
    }
    fn live(&self) -> usize {
        self.live.load(SeqCst)
    }
    fn of(&self, id: u32) -> u32 {
        self.per_id.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

struct Live(Arc<Tally>);

impl Live {
    fn new(tally: &Arc<Tally>) -> Self {
        let now = tally.live.fetch_add(1, SeqCst) + 1;
        tally.peak.fetch_max(now, SeqCst);
        Self(Arc::clone(tally))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, SeqCst);
    }
}

type Took = Arc<dyn Fn(u32, u32) -> u64 + Send + Sync>;
type Answer = Arc<dyn Fn(u32) -> Result<u32, &'static str> + Send + Sync>;
type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;
type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The `n`th call (from 1, over every clone), the `k`th of its request id, waits `took(n, k)`
/// ms and answers `answer(n)`. Each clone is not ready until `ready_after` has passed since
/// its first `poll_ready`; the first `fail_readies` readiness polls (over every clone) fail.
struct Probe<R: Clock> {
    rt: R,
    tally: Arc<Tally>,
    took: Took,
    answer: Answer,
    ready_after: Duration,
    fail_readies: u32,
    waiting: Option<Sleep>,
    ready: bool,
}

impl<R: Clock> Probe<R> {
    fn new(
        rt: &R,
        took: impl Fn(u32, u32) -> u64 + Send + Sync + 'static,
        answer: impl Fn(u32) -> Result<u32, &'static str> + Send + Sync + 'static,
    ) -> Self {
        Self {
            rt: rt.clone(),
            tally: Arc::default(),
            took: Arc::new(took),
            answer: Arc::new(answer),
            ready_after: Duration::ZERO,
            fail_readies: 0,
            waiting: None,
            ready: false,
        }
    }

    fn ready_after(mut self, wait: Duration) -> Self {
        self.ready_after = wait;
        self
    }

    fn fail_readies(mut self, n: u32) -> Self {
        self.fail_readies = n;
        self
    }
}

impl<R: Clock> Clone for Probe<R> {
    fn clone(&self) -> Self {
        self.tally.clones.fetch_add(1, SeqCst);
        Self {
            rt: self.rt.clone(),
            tally: Arc::clone(&self.tally),
            took: Arc::clone(&self.took),
            answer: Arc::clone(&self.answer),
            ready_after: self.ready_after,
            fail_readies: self.fail_readies,
            waiting: None,
            ready: false,
        }
    }
}

impl<R: Clock> Service<Req> for Probe<R> {
    type Response = u32;
    type Error = E;
    type Future = BoxFut<Result<u32, E>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        let k = self.tally.readies.fetch_add(1, SeqCst) + 1;
        if k <= self.fail_readies {
            return Poll::Ready(Err(Error::Inner("not ready")));
        }
        if self.ready {
            return Poll::Ready(Ok(()));
        }
        if !self.ready_after.is_zero() {
            let (rt, wait) = (&self.rt, self.ready_after);
            let sleep = self.waiting.get_or_insert_with(|| Box::pin(rt.sleep(wait)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.waiting = None;
        }
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        if !std::mem::take(&mut self.ready) {
            self.tally.unready_calls.fetch_add(1, SeqCst);
        }
        let n = self.tally.calls.fetch_add(1, SeqCst) + 1;
        let k = {
            let mut per_id = self.tally.per_id.lock().unwrap();
            let k = per_id.entry(request.id).or_insert(0);
            *k += 1;
            *k
        };
        let live = Live::new(&self.tally);
        let took = (self.took)(n, k);
        let wait = (took > 0).then(|| self.rt.sleep(MS * u32::try_from(took).unwrap()));
        let answer = (self.answer)(n);
        Box::pin(async move {
            let _live = live;
            if let Some(wait) = wait {
                wait.await;
            }
            answer.map_err(Error::Inner)
        })
    }
}

// --- a service whose clones share a pool, reserved in `poll_ready` (a concurrency limit) ---

struct PoolState {
    free: usize,
    waiters: Vec<Waker>,
}

#[derive(Clone)]
struct Pool(Arc<Mutex<PoolState>>, usize);

impl Pool {
    fn new(capacity: usize) -> Self {
        Self(
            Arc::new(Mutex::new(PoolState {
                free: capacity,
                waiters: Vec::new(),
            })),
            capacity,
        )
    }

    fn free(&self) -> usize {
        self.0.lock().unwrap().free
    }

    fn release(&self) {
        let waiters = {
            let mut state = self.0.lock().unwrap();
            state.free += 1;
            assert!(state.free <= self.1, "more slots came back than were taken");
            std::mem::take(&mut state.waiters)
        };
        for waker in waiters {
            waker.wake();
        }
    }
}

struct Slot(Pool);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.release();
    }
}

type Script = Arc<dyn Fn(u32) -> (u64, bool) + Send + Sync>;

/// Takes a slot of the shared pool in `poll_ready` and holds it until its call's future ends;
/// the `n`th call takes `script(n).0` ms and succeeds when `script(n).1`.
struct Pooled<R: Clock> {
    rt: R,
    pool: Pool,
    reserved: bool,
    script: Script,
    calls: Arc<AtomicU32>,
    unready_calls: Arc<AtomicU32>,
}

impl<R: Clock> Pooled<R> {
    fn new(
        rt: &R,
        pool: &Pool,
        script: impl Fn(u32) -> (u64, bool) + Send + Sync + 'static,
    ) -> Self {
        Self {
            rt: rt.clone(),
            pool: pool.clone(),
            reserved: false,
            script: Arc::new(script),
            calls: Arc::default(),
            unready_calls: Arc::default(),
        }
    }
}

impl<R: Clock> Clone for Pooled<R> {
    fn clone(&self) -> Self {
        Self {
            rt: self.rt.clone(),
            pool: self.pool.clone(),
            reserved: false,
            script: Arc::clone(&self.script),
            calls: Arc::clone(&self.calls),
            unready_calls: Arc::clone(&self.unready_calls),
        }
    }
}

impl<R: Clock> Drop for Pooled<R> {
    fn drop(&mut self) {
        if self.reserved {
            self.pool.release();
        }
    }
}

impl<R: Clock> Service<Req> for Pooled<R> {
    type Response = u32;
    type Error = E;
    type Future = BoxFut<Result<u32, E>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        if self.reserved {
            return Poll::Ready(Ok(()));
        }
        let mut state = self.pool.0.lock().unwrap();
        if state.free > 0 {
            state.free -= 1;
            self.reserved = true;
            Poll::Ready(Ok(()))
        } else {
            state.waiters.push(cx.waker().clone());
            Poll::Pending
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let slot = if std::mem::take(&mut self.reserved) {
            Some(Slot(self.pool.clone()))
        } else {
            self.unready_calls.fetch_add(1, SeqCst);
            None
        };
        let n = self.calls.fetch_add(1, SeqCst) + 1;
        let (took, ok) = (self.script)(n);
        let wait = self.rt.sleep(MS * u32::try_from(took).unwrap());
        Box::pin(async move {
            let _slot = slot;
            wait.await;
            if ok {
                Ok(request.id)
            } else {
                Err::<u32, E>(Error::Inner("down"))
            }
        })
    }
}

/// The pipeline events a listener saw, as `Debug` text of their kinds.
fn pipeline_events() -> (
    Arc<Mutex<Vec<String>>>,
    impl Fn(&Event<'_>) + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    (seen, move |event: &Event<'_>| {
        if event.policy == "pipeline" {
            sink.lock().unwrap().push(format!("{:?}", event.kind));
        }
    })
}

// === the service: always ready, attempts on clones ===========================================

// Docs: "The service is always ready: it waits for nothing in poll_ready" and "Each attempt is
// ... a clone of the inner service, which is polled ready first, inside the attempt: ... under
// its attempt timeout". An inner service that is never ready: the layer is ready anyway, and
// each call ends by the attempt timeout (or the deadline), the service never called.
async fn always_ready_and_readiness_under_the_attempt_timeout<R: Runtime>(rt: Clocked<R>) {
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .attempt_timeout(30 * MS)
        .build()
        .unwrap();
    let never = Probe::new(&rt, |_, _| 0, fine).ready_after(10_000 * DAY);
    let tally = Arc::clone(&never.tally);
    let mut service = PipelineLayer::new(pipeline).layer(never);
    for _ in 0..3 {
        poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    }
    assert_eq!(
        tally.readies(),
        0,
        "poll_ready polled nothing of the inner service"
    );
    let start = rt.now();
    assert_eq!(service.call(Req::new(1)).await, Err(Error::TimedOut));
    assert_eq!(rt.now() - start, 30 * MS);
    assert!(tally.readies() >= 1, "the attempt polled its clone");
    assert_eq!((tally.calls(), tally.live()), (0, 0));

    // A deadline alone cuts the readiness wait.
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(40 * MS)
        .build()
        .unwrap();
    let never = Probe::new(&rt, |_, _| 0, fine).ready_after(10_000 * DAY);
    let start = rt.now();
    let answer = PipelineLayer::new(pipeline)
        .layer(never)
        .oneshot(Req::new(2))
        .await;
    assert_eq!(answer, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(rt.now() - start, 40 * MS);

    // Ready even with the pipeline's bulkhead full: the refusal is the call's.
    let bulkhead = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap();
    let mut service = PipelineLayer::new(pipeline).layer(Probe::new(&rt, |_, _| 0, fine));
    poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
    assert_eq!(
        service.call(Req::new(3)).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    drop(held);
    assert_eq!(bulkhead.in_flight(), 0);
}

#[test]
fn the_layer_is_always_ready_and_readiness_runs_under_the_attempt_timeout() {
    on_every_runtime!(always_ready_and_readiness_under_the_attempt_timeout);
}

// Always ready, so `call` needs no `poll_ready` first; a response future holds nothing until
// polled, and one dropped unpolled gives nothing back twice.
async fn unpolled_futures_hold_nothing<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |_, _| 5, fine);
    let tally = Arc::clone(&probe.tally);
    let mut service = PipelineLayer::new(pipeline).layer(probe);
    let unpolled: Vec<_> = (0..3).map(|id| service.call(Req::new(id))).collect();
    assert_eq!((bulkhead.in_flight(), tally.calls()), (0, 0));
    let last = service.call(Req::new(9));
    drop(unpolled);
    assert_eq!(last.await, Ok(1));
    assert_eq!((bulkhead.in_flight(), bulkhead.available()), (0, 1));
    assert_eq!(tally.calls(), 1);
}

#[test]
fn a_response_future_holds_nothing_until_polled_and_call_needs_no_poll_ready() {
    on_every_runtime!(unpolled_futures_hold_nothing);
}

// Docs: "polled ready first, inside the attempt: after the pipeline's admission". While the
// call waits in the bulkhead's queue or for the rate limiter, the service is not polled.
async fn readiness_comes_after_admission<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(1)
        .max_wait(DAY)
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |_, _| 5, fine);
    let tally = Arc::clone(&probe.tally);
    let service = PipelineLayer::new(pipeline).layer(probe);
    let call = rt.spawn(service.clone().oneshot(Req::new(1)));
    rt.sleep(100 * MS).await;
    assert_eq!(bulkhead.queued(), 1);
    assert_eq!(
        (tally.readies(), tally.calls()),
        (0, 0),
        "the service is neither polled nor called before admission"
    );
    drop(held);
    assert_eq!(call.await.unwrap(), Ok(1));
    assert!(tally.readies() >= 1);
    assert_eq!(
        tally.unready_calls.load(SeqCst),
        0,
        "every call was polled ready first"
    );
    assert_eq!(bulkhead.in_flight(), 0);

    // The rate limiter's wait comes first too.
    let limiter = RateLimiter::builder(1, Duration::from_secs(1))
        .runtime(rt.clone())
        .burst(1)
        .build()
        .unwrap();
    limiter.check().unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .rate_limit(limiter)
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |_, _| 0, fine);
    let tally = Arc::clone(&probe.tally);
    let service = PipelineLayer::new(pipeline).layer(probe);
    let call = rt.spawn(service.oneshot(Req::new(2)));
    rt.sleep(500 * MS).await;
    assert_eq!(
        (tally.readies(), tally.calls()),
        (0, 0),
        "still waiting for the limiter"
    );
    assert_eq!(call.await.unwrap(), Ok(1));
    assert_eq!(tally.calls(), 1);
}

#[test]
fn the_inner_service_is_polled_ready_only_after_the_pipelines_admission() {
    on_every_runtime!(readiness_comes_after_admission);
}

// Docs: "timed by its breaker and adaptive limiter as the service's latency". A service slow
// to be ready but quick to answer is a slow call to the breaker.
async fn slow_readiness_is_latency_to_the_breaker<R: Runtime>(rt: Clocked<R>) {
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .slow_call_rate(0.9, 50 * MS)
        .minimum_calls(10)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let slow_ready = Probe::new(&rt, |_, _| 0, fine).ready_after(100 * MS);
    let start = rt.now();
    let answer = PipelineLayer::new(pipeline.clone())
        .layer(slow_ready)
        .oneshot(Req::new(1))
        .await;
    assert_eq!(answer, Ok(1));
    assert_eq!(rt.now() - start, 100 * MS);
    let counts = breaker.counts();
    assert_eq!((counts.calls, counts.slow, counts.failures), (1, 1, 0));
    // A quick one is not slow.
    let quick = Probe::new(&rt, |_, _| 10, fine);
    let _ = PipelineLayer::new(pipeline)
        .layer(quick)
        .oneshot(Req::new(2))
        .await;
    let counts = breaker.counts();
    assert_eq!((counts.calls, counts.slow), (2, 1));
}

#[test]
fn slow_readiness_counts_as_the_services_latency_for_the_breaker() {
    on_every_runtime!(slow_readiness_is_latency_to_the_breaker);
}

// The same for an adaptive limiter from a configuration: AIMD backs off on a call slower than
// its `timeout`, and a call whose readiness took long is one.
async fn slow_readiness_is_latency_to_the_adaptive_limiter<R: Runtime>(rt: Clocked<R>) {
    let registry = Registry::builder(config(
        "[instances.inv]\ndeadline = \"10s\"\n[instances.inv.adaptive]\nalgorithm = \"aimd\"\ninitial_limit = 10\nmin_limit = 1\nmax_limit = 100\ntimeout = \"50ms\"\nbackoff_ratio = 0.5\n",
    ))
    .runtime(rt.clone())
    .build()
    .unwrap();
    let limiter = registry.adaptive_limiter("inv").unwrap();
    let layer = PipelineLayer::new(registry.pipeline("inv").unwrap());
    let before = limiter.limit();
    let quick = Probe::new(&rt, |_, _| 1, fine);
    assert_eq!(layer.layer(quick).oneshot(Req::new(1)).await, Ok(1));
    let after_quick = limiter.limit();
    assert!(after_quick >= before, "{before} -> {after_quick}");
    let slow_ready = Probe::new(&rt, |_, _| 0, fine).ready_after(200 * MS);
    assert_eq!(layer.layer(slow_ready).oneshot(Req::new(2)).await, Ok(1));
    let after_slow = limiter.limit();
    assert!(
        after_slow < after_quick,
        "the slow readiness was a slow call: {after_quick} -> {after_slow}"
    );
    assert_eq!((limiter.in_flight(), limiter.queued()), (0, 0));
}

#[test]
fn slow_readiness_counts_as_the_services_latency_for_the_adaptive_limiter() {
    on_every_runtime!(slow_readiness_is_latency_to_the_adaptive_limiter);
}

/// Runs one call of `attempts` attempts (all failing when `fails`, else the first answers),
/// or refused by a full bulkhead when `attempts` is 0: (attempts made, request clones,
/// service clones).
async fn clones_of_one_call<R: Runtime>(
    rt: &Clocked<R>,
    attempts: u32,
    fails: bool,
) -> (u32, u32, u32) {
    let bulkhead = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let held = (attempts == 0).then(|| bulkhead.try_acquire_owned().unwrap());
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead)
        .retry(constant(MS, attempts.max(1)))
        .build()
        .unwrap();
    let probe = Probe::new(rt, |_, _| 1, if fails { down } else { fine });
    let tally = Arc::clone(&probe.tally);
    let request = Req::new(9);
    let counter = request.clone();
    counter.clones.store(0, SeqCst);
    let answer = PipelineLayer::new(pipeline)
        .layer(probe)
        .oneshot(request)
        .await;
    assert_eq!(answer.is_ok(), !fails && attempts > 0, "{answer:?}");
    assert_eq!(tally.unready_calls.load(SeqCst), 0);
    drop(held);
    (tally.calls(), counter.clones(), tally.clones())
}

// Docs: "An attempt that a retry could follow ... sends a clone; the last possible attempt
// sends the request itself" and "of the request one per attempt a retry could follow (none
// for a pipeline without retry, `n - 1` for a call that used all `n` its schedule allows)":
// never cloned for a call refused before any attempt, and each attempt has a clone of the
// service.
async fn one_request_clone_per_attempt<R: Runtime>(rt: Clocked<R>) {
    for (attempts, fails, made, cloned) in [
        (3, true, 3, 2),
        (3, false, 1, 1),
        (1, true, 1, 0),
        (5, true, 5, 4),
        (0, true, 0, 0),
    ] {
        let (calls, requests, services) = clones_of_one_call(&rt, attempts, fails).await;
        assert_eq!(calls, made, "{attempts} attempts");
        assert_eq!(requests, cloned, "request clones, {attempts} attempts");
        assert!(
            services >= made,
            "service clones, {attempts} attempts: {services}"
        );
    }
}

#[test]
fn only_an_attempt_a_retry_could_follow_clones_the_request() {
    on_every_runtime!(one_request_clone_per_attempt);
}

// Docs: "The call keeps a clone of the service (one per call, made in `call`) ... for `n`
// attempts, `n + 1` clones of the service": 4 for 3 attempts, 2 for 1, and 1 for a call refused
// before any attempt. (Found by this suite against an earlier sentence, "one clone of the
// service ... per attempt", which left out the call's own.)
async fn one_service_clone_per_attempt<R: Runtime>(rt: Clocked<R>) {
    let mut seen = Vec::new();
    for attempts in [3, 1, 0] {
        let (calls, _, services) = clones_of_one_call(&rt, attempts, true).await;
        seen.push((calls, services));
    }
    assert_eq!(seen, [(3, 4), (1, 2), (0, 1)], "(attempts, service clones)");
}

#[test]
fn a_call_clones_the_service_once_and_once_more_per_attempt() {
    on_every_runtime!(one_service_clone_per_attempt);
}

// Docs: "A readiness error is that attempt's error": the breaker counts it as a failure, the
// retry stage retries it, and behind `BoxError` it is the service's own error.
async fn readiness_errors_are_attempt_errors<R: Runtime>(rt: Clocked<R>) {
    let (breaker, pipeline) = counting_retries(&rt);
    let probe = Probe::new(&rt, |_, _| 0, fine).fail_readies(2);
    let tally = Arc::clone(&probe.tally);
    let answer = PipelineLayer::new(pipeline)
        .layer(probe)
        .oneshot(Req::new(1))
        .await;
    assert_eq!(answer, Ok(1));
    assert_eq!(tally.calls(), 1);
    let counts = breaker.counts();
    assert_eq!((counts.calls, counts.failures), (3, 2));

    // Boxed, out of attempts.
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(MS, 2))
        .build()
        .unwrap();
    let never = Probe::new(&rt, |_, _| 0, fine)
        .fail_readies(u32::MAX)
        .map_err(boxed);
    let err = PipelineLayer::new(pipeline)
        .layer(never)
        .oneshot(Req::new(1))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "not ready");
    assert!(cause::<Rejected>(&*err).is_none());
}

#[test]
fn a_readiness_error_is_the_attempts_error_for_breaker_retry_and_box_error() {
    on_every_runtime!(readiness_errors_are_attempt_errors);
}

// === the stack's one error type ===============================================================

#[derive(Debug, PartialEq)]
enum MyError {
    Refused(Rejected),
    Late,
    Own(&'static str),
}

impl PolicyError for MyError {
    fn rejected(rejected: Rejected) -> Self {
        Self::Refused(rejected)
    }
    fn timed_out() -> Self {
        Self::Late
    }
}

// Docs: "a stage's refusal is PolicyError::rejected, an attempt timeout PolicyError::timed_out,
// and the service's own error comes back as it was" — typed, boxed and a user's enum.
async fn errors_in_every_error_type<R: Runtime>(rt: Clocked<R>) {
    let full = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let _held = full.try_acquire_owned().unwrap();
    let limiter = RateLimiter::builder(1, DAY)
        .runtime(rt.clone())
        .burst(1)
        .max_wait(Duration::ZERO)
        .build()
        .unwrap();
    limiter.check().unwrap();
    let forced = CircuitBreaker::builder()
        .runtime(rt.clone())
        .build()
        .unwrap();
    forced.force_open();

    let own = |e: E| MyError::Own(e.into_inner().unwrap());
    let slow = || Probe::new(&rt, |_, _| 100, fine);
    let failing = || Probe::new(&rt, |_, _| 1, down);

    // The user's enum.
    let timeout = Pipeline::builder()
        .runtime(rt.clone())
        .attempt_timeout(10 * MS)
        .build()
        .unwrap();
    let deadline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(10 * MS)
        .build()
        .unwrap();
    let bulkhead = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(full.clone())
        .build()
        .unwrap();
    let rate = Pipeline::builder()
        .runtime(rt.clone())
        .rate_limit(limiter.clone())
        .build()
        .unwrap();
    let open = Pipeline::builder()
        .runtime(rt.clone())
        .breaker(forced.clone())
        .build()
        .unwrap();
    let plain = Pipeline::builder().runtime(rt.clone()).build().unwrap();
    assert_eq!(
        PipelineLayer::new(timeout.clone())
            .layer(slow().map_err(own))
            .oneshot(Req::new(1))
            .await,
        Err(MyError::Late)
    );
    assert_eq!(
        PipelineLayer::new(deadline.clone())
            .layer(slow().map_err(own))
            .oneshot(Req::new(1))
            .await,
        Err(MyError::Refused(Rejected::DeadlineExceeded))
    );
    assert_eq!(
        PipelineLayer::new(bulkhead.clone())
            .layer(slow().map_err(own))
            .oneshot(Req::new(1))
            .await,
        Err(MyError::Refused(Rejected::BulkheadFull))
    );
    assert!(matches!(
        PipelineLayer::new(rate.clone())
            .layer(slow().map_err(own))
            .oneshot(Req::new(1))
            .await,
        Err(MyError::Refused(Rejected::RateLimited { .. }))
    ));
    assert!(matches!(
        PipelineLayer::new(open.clone())
            .layer(slow().map_err(own))
            .oneshot(Req::new(1))
            .await,
        Err(MyError::Refused(Rejected::CircuitOpen { .. }))
    ));
    assert_eq!(
        PipelineLayer::new(plain.clone())
            .layer(failing().map_err(own))
            .oneshot(Req::new(1))
            .await,
        Err(MyError::Own("down"))
    );

    // Typed: not nested.
    assert_eq!(
        PipelineLayer::new(timeout.clone())
            .layer(slow())
            .oneshot(Req::new(1))
            .await,
        Err(Error::TimedOut)
    );
    assert!(matches!(
        PipelineLayer::new(rate.clone())
            .layer(slow())
            .oneshot(Req::new(1))
            .await,
        Err(Error::Rejected(Rejected::RateLimited { .. }))
    ));

    // Boxed: found with `cause`.
    let err = PipelineLayer::new(timeout)
        .layer(slow().map_err(boxed))
        .oneshot(Req::new(1))
        .await
        .unwrap_err();
    assert!(cause::<Elapsed>(&*err).is_some(), "{err:?}");
    let err = PipelineLayer::new(deadline)
        .layer(slow().map_err(boxed))
        .oneshot(Req::new(1))
        .await
        .unwrap_err();
    assert_eq!(cause::<Rejected>(&*err), Some(&Rejected::DeadlineExceeded));
    let err = PipelineLayer::new(open)
        .layer(slow().map_err(boxed))
        .oneshot(Req::new(1))
        .await
        .unwrap_err();
    assert!(matches!(
        cause::<Rejected>(&*err),
        Some(Rejected::CircuitOpen { .. })
    ));
    let err = PipelineLayer::new(plain)
        .layer(failing().map_err(boxed))
        .oneshot(Req::new(1))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "down");
    assert!(cause::<Rejected>(&*err).is_none() && cause::<Elapsed>(&*err).is_none());
}

#[test]
fn refusals_timeouts_and_own_errors_come_back_in_any_policy_error_type() {
    on_every_runtime!(errors_in_every_error_type);
}

// Docs: "a timeout from a Tidewall layer below is an error like any other to it" — the
// classifier (default: every `Err` retryable) and the breaker judge it — while "a refusal from
// a policy below ... is treated as the pipeline's own breaker's refusal: not shown to the
// classifier, recorded as `Ignored` by its breaker (nothing in its window), ..., retried after
// the refusal's `retry_after`".
async fn refusals_from_below_are_retried_unrecorded_and_timeouts_are_errors<R: Runtime>(
    rt: Clocked<R>,
) {
    // A timeout below: retried, counted by the pipeline's breaker.
    let (breaker, pipeline) = counting_retries(&rt);
    let slow = Probe::new(&rt, |_, _| 100, fine);
    let tally = Arc::clone(&slow.tally);
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .layer(TimeoutLayer::new(20 * MS).runtime(rt.clone()))
        .service(slow);
    let start = rt.now();
    assert_eq!(service.oneshot(Req::new(1)).await, Err(Error::TimedOut));
    assert_eq!(tally.calls(), 3);
    assert_eq!(rt.now() - start, 62 * MS);
    assert_eq!(breaker.counts().failures, 3);
    assert_eq!(tally.live(), 0);

    // Not retried when the classifier says so.
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(MS, 3))
        .classify(ErrorsWhere(busy_only))
        .build()
        .unwrap();
    let slow = Probe::new(&rt, |_, _| 100, fine);
    let tally = Arc::clone(&slow.tally);
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .layer(TimeoutLayer::new(20 * MS).runtime(rt.clone()))
        .service(slow);
    assert_eq!(service.oneshot(Req::new(1)).await, Err(Error::TimedOut));
    assert_eq!(tally.calls(), 1);

    // A full bulkhead below (AdmitLayer, Reject): retried, but nothing in the pipeline's
    // breaker's window.
    let below = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let held = below.try_acquire_owned().unwrap();
    let (breaker, pipeline) = counting_retries(&rt);
    let probe = Probe::new(&rt, |_, _| 1, fine);
    let tally = Arc::clone(&probe.tally);
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(probe);
    assert_eq!(
        service.oneshot(Req::new(1)).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(tally.calls(), 0);
    assert_eq!(below.rejected(), 3, "every attempt met the full bulkhead");
    assert_eq!(
        breaker.counts().calls,
        0,
        "a refusal from below teaches nothing"
    );

    // Retried even when the classifier would not retry an error: it is not shown one.
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(MS, 3))
        .classify(ErrorsWhere(busy_only))
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |_, _| 1, fine);
    let tally = Arc::clone(&probe.tally);
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(probe);
    assert_eq!(
        service.oneshot(Req::new(1)).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(below.rejected(), 6);
    assert_eq!(tally.calls(), 0);
    // And a retry that finds the slot free calls the service.
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(MS, 3))
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |_, _| 1, fine);
    let tally = Arc::clone(&probe.tally);
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(probe);
    let freed = async {
        rt.sleep(MS / 2).await;
        drop(held);
    };
    let (answer, ()) = futures_util::join!(service.oneshot(Req::new(1)), freed);
    assert_eq!(answer, Ok(1));
    assert_eq!(below.rejected(), 7, "the first attempt only");
    assert_eq!(tally.calls(), 1);

    // A refusal that can never pass (`InsufficientCapacity`) is not retried.
    let sent = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&sent);
    let too_big = tower::service_fn(move |_: Req| {
        counted.fetch_add(1, SeqCst);
        async { Err::<u32, E>(Error::Rejected(Rejected::InsufficientCapacity { burst: 1 })) }
    });
    let (breaker, pipeline) = counting_retries(&rt);
    let service = PipelineLayer::new(pipeline).layer(too_big);
    assert_eq!(
        service.oneshot(Req::new(1)).await,
        Err(Error::Rejected(Rejected::InsufficientCapacity { burst: 1 }))
    );
    assert_eq!(sent.load(SeqCst), 1);
    assert_eq!(breaker.counts().calls, 0);
}

#[test]
fn a_refusal_from_a_layer_below_is_retried_unrecorded_and_a_timeout_is_an_error() {
    on_every_runtime!(refusals_from_below_are_retried_unrecorded_and_timeouts_are_errors);
}

// Docs (`PipelineLayer`, Results): a refusal from a policy below ("a full bulkhead, an open
// breaker, a rate limit, a deadline below that ran out") is "teaching its admission stages
// (bulkhead, adaptive limiter) nothing"; "The layer cannot tell which of them reached the
// service ..., so none counts against it." A failure the service gave still counts.
async fn what_the_admission_stages_learn_from_below<R: Runtime>(rt: Clocked<R>) {
    let aimd = Aimd::builder()
        .min_limit(1)
        .initial_limit(10)
        .max_limit(10)
        .build()
        .unwrap();
    let limiter = AdaptiveLimiter::builder(aimd)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let over = |limiter: &AdaptiveLimiter<Aimd, Clocked<R>>, attempts: u32| {
        Pipeline::builder()
            .runtime(rt.clone())
            .bulkhead(limiter.clone())
            .retry(constant(MS, attempts))
            .build()
            .unwrap()
    };
    // A full bulkhead below: nothing learnt, the slot given back.
    let below = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let held = below.try_acquire_owned().unwrap();
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(over(&limiter, 1)))
        .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(Probe::new(&rt, |_, _| 1, fine));
    assert_eq!(
        service.oneshot(Req::new(1)).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!((limiter.limit(), limiter.in_flight()), (10, 0));

    // A wait below that ran out (an `AdmitLayer`'s `max_wait`): a `DeadlineExceeded` that never
    // reached the service, nothing learnt.
    let waiting = ServiceBuilder::new()
        .layer(PipelineLayer::new(over(&limiter, 1)))
        .layer(
            AdmitLayer::new(
                Bulkhead::builder(1)
                    .runtime(rt.clone())
                    .max_queue(4)
                    .build()
                    .unwrap(),
                AdmitMode::WaitCall,
            )
            .max_wait(5 * MS)
            .runtime(rt.clone()),
        )
        .service(Probe::new(&rt, |_, _| 100, fine));
    let first = waiting.clone().oneshot(Req::new(1));
    let second = async {
        rt.sleep(MS).await;
        waiting.clone().oneshot(Req::new(2)).await
    };
    let (first, second) = futures_util::join!(first, second);
    assert_eq!(first, Ok(1));
    assert_eq!(second, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!((limiter.limit(), limiter.in_flight()), (10, 0));

    // A deadline below that cut a slow call: nothing learnt either.
    let inner = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(10 * MS)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(over(&limiter, 1)))
        .layer(PipelineLayer::new(inner))
        .service(Probe::new(&rt, |_, _| 100, fine));
    assert_eq!(
        service.oneshot(Req::new(1)).await,
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    assert_eq!((limiter.limit(), limiter.in_flight()), (10, 0));

    // A failure the service gave, then a retry refused below: the failure is what the call
    // teaches, and AIMD backs off.
    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    let failing_then_full = tower::service_fn(move |_: Req| {
        let n = counted.fetch_add(1, SeqCst);
        async move {
            if n == 0 {
                Err::<u32, E>(Error::Inner("down"))
            } else {
                Err(Error::Rejected(Rejected::BulkheadFull))
            }
        }
    });
    let service = PipelineLayer::new(over(&limiter, 2)).layer(failing_then_full);
    assert_eq!(
        service.oneshot(Req::new(1)).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(calls.load(SeqCst), 2);
    assert!(
        limiter.limit() < 10,
        "the earlier failure: {}",
        limiter.limit()
    );
    assert_eq!(limiter.in_flight(), 0);
    drop(held);
}

#[test]
fn the_admission_stages_learn_nothing_from_a_refusal_below_but_the_services_failures() {
    on_every_runtime!(what_the_admission_stages_learn_from_below);
}

// === composed with other layers =============================================================

// PolicyError docs: "a breaker ... record[s] a refusal from below as `Ignored`, nothing in a
// window": a BreakerLayer over a
// PipelineLayer does not count the pipeline's refusals (bulkhead full, deadline), but counts
// its attempt timeout and the service's errors.
async fn a_breaker_layer_over_the_pipeline<R: Runtime>(rt: Clocked<R>) {
    let outer = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(DAY)
        .build()
        .unwrap();
    let full = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let held = full.try_acquire_owned().unwrap();
    let refusing = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(full)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(BreakerLayer::new(outer.clone()))
        .layer(PipelineLayer::new(refusing))
        .service(Probe::new(&rt, |_, _| 1, fine));
    assert_eq!(
        service.oneshot(Req::new(1)).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    drop(held);
    let late = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(10 * MS)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(BreakerLayer::new(outer.clone()))
        .layer(PipelineLayer::new(late))
        .service(Probe::new(&rt, |_, _| 100, fine));
    assert_eq!(
        service.oneshot(Req::new(1)).await,
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    assert_eq!(outer.state(), State::Closed);
    assert_eq!(
        outer.counts().calls,
        0,
        "refusals from below: nothing in the window"
    );

    let timing_out = Pipeline::builder()
        .runtime(rt.clone())
        .attempt_timeout(10 * MS)
        .build()
        .unwrap();
    let service = ServiceBuilder::new()
        .layer(BreakerLayer::new(outer.clone()))
        .layer(PipelineLayer::new(timing_out))
        .service(Probe::new(&rt, |_, _| 100, fine));
    assert_eq!(service.oneshot(Req::new(1)).await, Err(Error::TimedOut));
    assert_eq!(outer.state(), State::Open, "a timeout is a failure");
}

#[test]
fn a_breaker_layer_over_a_pipeline_layer_ignores_its_refusals_but_not_its_timeouts() {
    on_every_runtime!(a_breaker_layer_over_the_pipeline);
}

// A RetryLayer with honor_retry_after over a pipeline whose breaker opened: the pipeline's
// `CircuitOpen` carries the hint, behind `BoxError`, and the retry waits it out.
async fn a_retry_layer_over_the_pipeline_waits_out_its_breaker<R: Runtime>(rt: Clocked<R>) {
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(2 * Duration::from_secs(1))
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |_, _| 1, |n| if n == 1 { Err("down") } else { Ok(n) });
    let tally = Arc::clone(&probe.tally);
    let service = ServiceBuilder::new()
        .layer(
            RetryLayer::new(constant(MS, 3))
                .runtime(rt.clone())
                .honor_retry_after()
                .deadline(10 * Duration::from_secs(1)),
        )
        .layer(PipelineLayer::new(pipeline))
        .map_err(boxed_any)
        .service(probe);
    let start = rt.now();
    let answer = service.oneshot(Req::new(1)).await;
    assert_eq!(answer.map_err(|e| e.to_string()), Ok(2));
    assert_eq!(tally.calls(), 2, "the shed attempt called nothing");
    let took = rt.now() - start;
    assert!(
        took >= 2 * Duration::from_secs(1),
        "waited out the break: {took:?}"
    );
    assert!(took < 3 * Duration::from_secs(1), "{took:?}");
}

/// Any typed error boxed: a refusal as `Rejected`, a timeout as `Elapsed`, the service's own as
/// its text.
fn boxed_any(e: E) -> BoxError {
    match e {
        Error::Inner(s) => BoxError::from(s),
        Error::Rejected(r) => Box::new(r),
        _ => Box::new(Error::<std::convert::Infallible>::TimedOut),
    }
}

#[test]
fn a_retry_layer_over_a_pipeline_layer_honours_its_breakers_retry_after() {
    on_every_runtime!(a_retry_layer_over_the_pipeline_waits_out_its_breaker);
}

// The pipeline's own retry stage honours a hint from a BreakerLayer below, behind BoxError
// (PipelineBuilder::honor_retry_after; tower error docs: BoxError carries a Rejected's hint).
async fn the_pipeline_over_a_breaker_layer_honours_its_hint<R: Runtime>(rt: Clocked<R>) {
    let below = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(2 * Duration::from_secs(1))
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(10 * Duration::from_secs(1))
        .retry(constant(MS, 3))
        .honor_retry_after()
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |_, _| 1, |n| if n == 1 { Err("down") } else { Ok(n) });
    let tally = Arc::clone(&probe.tally);
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .layer(BreakerLayer::new(below))
        .map_err(boxed_any)
        .service(probe);
    let start = rt.now();
    let answer = service.oneshot(Req::new(1)).await;
    assert_eq!(answer.map_err(|e| e.to_string()), Ok(2));
    assert_eq!(tally.calls(), 2);
    let took = rt.now() - start;
    assert!(took >= 2 * Duration::from_secs(1), "{took:?}");
    assert!(took < 3 * Duration::from_secs(1), "{took:?}");
}

#[test]
fn a_pipeline_layer_over_a_breaker_layer_honours_the_breakers_hint() {
    on_every_runtime!(the_pipeline_over_a_breaker_layer_honours_its_hint);
}

// Cancel safety: "dropping the response future drops the running attempt and releases what the
// pipeline holds, as dropping Pipeline::call's future does" — a TimeoutLayer above cuts a
// retrying call; the bulkhead slot, the attempt and the listener's `Cancelled` follow.
async fn a_timeout_layer_over_the_pipeline<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let (events, listener) = pipeline_events();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead.clone())
        .retry(constant(20 * MS, 10))
        .on_event(listener)
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |_, _| 10, down);
    let tally = Arc::clone(&probe.tally);
    let service = ServiceBuilder::new()
        .layer(TimeoutLayer::new(50 * MS).runtime(rt.clone()))
        .layer(PipelineLayer::new(pipeline))
        .service(probe);
    let start = rt.now();
    assert_eq!(
        service.clone().oneshot(Req::new(1)).await,
        Err(Error::TimedOut)
    );
    assert_eq!(rt.now() - start, 50 * MS);
    assert_eq!(
        tally.calls(),
        2,
        "attempts at 0 and 30 (the next at 60): cut at 50"
    );
    assert_eq!((tally.live(), bulkhead.in_flight()), (0, 0));
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events.last().map(String::as_str),
        Some("Cancelled"),
        "{events:?}"
    );
    // The next call is admitted.
    let quick = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap();
    let answer = PipelineLayer::new(quick)
        .layer(Probe::new(&rt, |_, _| 1, fine))
        .oneshot(Req::new(2))
        .await;
    assert_eq!(answer, Ok(1));
}

#[test]
fn a_timeout_layer_over_a_pipeline_layer_cuts_the_call_and_everything_comes_back() {
    on_every_runtime!(a_timeout_layer_over_the_pipeline);
}

// A dropped half-open probe: "breaker permit — recorded as nothing". With no limit on the
// half-open wait, a leaked probe would keep the breaker refusing for good.
async fn a_dropped_probe_is_recorded_as_nothing<R: Runtime>(rt: Clocked<R>) {
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(100 * MS)
        .max_half_open_wait(None)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let layer = PipelineLayer::new(pipeline);
    let first = Probe::new(&rt, |_, _| 1, down);
    assert_eq!(
        layer.layer(first).oneshot(Req::new(1)).await,
        Err(Error::Inner("down"))
    );
    assert_eq!(breaker.state(), State::Open);
    rt.sleep(200 * MS).await;
    let stuck = Probe::new(&rt, |_, _| 1_000_000, fine);
    let stuck_tally = Arc::clone(&stuck.tally);
    let cut = layer
        .layer(stuck)
        .oneshot(Req::new(2))
        .timeout_on(&rt, 10 * MS)
        .await;
    assert!(cut.is_err());
    assert_eq!((stuck_tally.calls(), stuck_tally.live()), (1, 0));
    let quick = Probe::new(&rt, |_, _| 1, fine);
    assert_eq!(layer.layer(quick).oneshot(Req::new(3)).await, Ok(1));
    assert_eq!(
        breaker.state(),
        State::Closed,
        "the next probe was admitted"
    );
}

#[test]
fn dropping_a_half_open_probe_call_gives_the_probe_back() {
    on_every_runtime!(a_dropped_probe_is_recorded_as_nothing);
}

// A HedgeLayer over a PipelineLayer: every copy is a pipeline call of its own (the bulkhead
// holds one slot per copy), and the loser is dropped with its slot.
async fn hedge_over_pipeline<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(2)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap();
    let hedge = Hedge::builder()
        .runtime(rt.clone())
        .delay(20 * MS)
        .max_hedges(1)
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |n, _| if n == 1 { 1_000 } else { 10 }, fine);
    let tally = Arc::clone(&probe.tally);
    let service = ServiceBuilder::new()
        .layer(HedgeLayer::new(hedge.clone()))
        .layer(PipelineLayer::new(pipeline.clone()))
        .service(probe);
    let start = rt.now();
    let call = rt.spawn(service.oneshot(Req::new(1)));
    rt.sleep(25 * MS).await;
    assert_eq!(bulkhead.in_flight(), 2, "one slot per copy");
    assert_eq!(call.await.unwrap(), Ok(2));
    assert_eq!(rt.now() - start, 30 * MS);
    assert_eq!(
        (bulkhead.in_flight(), tally.live()),
        (0, 0),
        "the loser let go"
    );

    // With one slot, the hedge is refused and the primary's answer stands.
    let narrow = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(narrow.clone())
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |n, _| if n == 1 { 1_000 } else { 10 }, fine);
    let tally = Arc::clone(&probe.tally);
    let service = ServiceBuilder::new()
        .layer(HedgeLayer::new(hedge))
        .layer(PipelineLayer::new(pipeline))
        .service(probe);
    let start = rt.now();
    assert_eq!(service.oneshot(Req::new(1)).await, Ok(1));
    assert_eq!(rt.now() - start, 1_000 * MS);
    assert_eq!((tally.calls(), narrow.in_flight()), (1, 0));
}

#[test]
fn a_hedge_layer_over_a_pipeline_layer_makes_each_copy_a_pipeline_call() {
    on_every_runtime!(hedge_over_pipeline);
}

// A PipelineLayer over a HedgeLayer: every attempt is hedged; an attempt whose copies all fail
// at once starts its hedge at once (hedge docs), so 3 attempts make 6 calls.
async fn pipeline_over_hedge<R: Runtime>(rt: Clocked<R>) {
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(5 * MS, 3))
        .build()
        .unwrap();
    let hedge = Hedge::builder()
        .runtime(rt.clone())
        .delay(20 * MS)
        .max_hedges(1)
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |_, _| 0, down);
    let tally = Arc::clone(&probe.tally);
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline))
        .layer(HedgeLayer::new(hedge))
        .service(probe);
    let start = rt.now();
    assert_eq!(
        service.oneshot(Req::new(1)).await,
        Err(Error::Inner("down"))
    );
    assert_eq!(tally.calls(), 6);
    assert_eq!(rt.now() - start, 10 * MS);
    assert_eq!(tally.live(), 0);
}

#[test]
fn a_pipeline_layer_over_a_hedge_layer_hedges_every_attempt() {
    on_every_runtime!(pipeline_over_hedge);
}

// Deep nesting: PipelineLayer over PipelineLayer. Attempts multiply, errors do not nest, the
// outer deadline ends the inner call, and both bulkheads are given back.
async fn nested_pipelines<R: Runtime>(rt: Clocked<R>) {
    let outer = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(MS, 2))
        .build()
        .unwrap();
    let inner = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(MS, 3))
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |_, _| 1, down);
    let tally = Arc::clone(&probe.tally);
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(outer))
        .layer(PipelineLayer::new(inner))
        .service(probe);
    assert_eq!(
        service.oneshot(Req::new(1)).await,
        Err(Error::Inner("down"))
    );
    assert_eq!(tally.calls(), 6);

    // The outer deadline cuts the inner call.
    let outer_bh = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let inner_bh = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let outer = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(30 * MS)
        .bulkhead(outer_bh.clone())
        .build()
        .unwrap();
    let inner = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(DAY)
        .bulkhead(inner_bh.clone())
        .retry(constant(MS, 5))
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |_, _| 100, fine);
    let tally = Arc::clone(&probe.tally);
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(outer))
        .layer(PipelineLayer::new(inner))
        .service(probe);
    let start = rt.now();
    assert_eq!(
        service.oneshot(Req::new(1)).await,
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    assert_eq!(rt.now() - start, 30 * MS);
    assert_eq!(
        (outer_bh.in_flight(), inner_bh.in_flight(), tally.live()),
        (0, 0, 0)
    );

    // The inner deadline's refusal is retried by the outer pipeline as any error.
    let outer = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(DAY)
        .retry(constant(5 * MS, 2))
        .build()
        .unwrap();
    let inner = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(30 * MS)
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |_, _| 100, fine);
    let tally = Arc::clone(&probe.tally);
    let service = ServiceBuilder::new()
        .layer(PipelineLayer::new(outer))
        .layer(PipelineLayer::new(inner))
        .service(probe);
    let start = rt.now();
    assert_eq!(
        service.oneshot(Req::new(1)).await,
        Err(Error::Rejected(Rejected::DeadlineExceeded))
    );
    assert_eq!(tally.calls(), 2);
    assert_eq!(rt.now() - start, 65 * MS);
}

#[test]
fn nested_pipeline_layers_multiply_attempts_and_share_one_error_type() {
    on_every_runtime!(nested_pipelines);
}

// === deadlines, timeouts and extremes ======================================================

// Pipeline::call docs, which the layer shares: DeadlineExceeded when the deadline ends the
// call, TimedOut for a last attempt its own timeout cut, and a retry that cannot start before
// the deadline (its `min_attempt_time`) is not started: the last failure is the answer.
async fn deadline_against_attempt_timeout<R: Runtime>(rt: Clocked<R>) {
    let slow = || Probe::new(&rt, |_, _| 200, fine);
    let run = |pipeline| {
        let service = PipelineLayer::new(pipeline).layer(slow());
        let tally = Arc::clone(&service.get_ref().tally);
        let rt = rt.clone();
        async move {
            let start = rt.now();
            let answer = service.oneshot(Req::new(1)).await;
            (answer, tally.calls(), ms_of(rt.now() - start))
        }
    };
    // The deadline shorter than the attempt timeout.
    let p = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(50 * MS)
        .retry(constant(MS, 1))
        .attempt_timeout(100 * MS)
        .build()
        .unwrap();
    assert_eq!(
        run(p).await,
        (Err(Error::Rejected(Rejected::DeadlineExceeded)), 1, 50)
    );
    // The attempt timeout on a single attempt.
    let p = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(Duration::from_secs(1))
        .retry(constant(MS, 1))
        .attempt_timeout(20 * MS)
        .build()
        .unwrap();
    assert_eq!(run(p).await, (Err(Error::TimedOut), 1, 20));
    // Attempts at 0 and 21 (each cut at 20 ms); at 42 only 3 ms would be left: with a 5 ms
    // minimum the third is not started and the last failure (a timeout) is the answer.
    let p = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(45 * MS)
        .min_attempt_time(5 * MS)
        .retry(constant(MS, 10))
        .attempt_timeout(20 * MS)
        .build()
        .unwrap();
    let (answer, calls, took) = run(p).await;
    assert_eq!((answer, calls), (Err(Error::TimedOut), 2));
    assert!((41..=42).contains(&took), "{took}");
    // Without the minimum the third starts and the deadline cuts it.
    let p = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(45 * MS)
        .retry(constant(MS, 10))
        .attempt_timeout(20 * MS)
        .build()
        .unwrap();
    assert_eq!(
        run(p).await,
        (Err(Error::Rejected(Rejected::DeadlineExceeded)), 3, 45)
    );
}

#[test]
fn the_deadline_and_the_attempt_timeout_end_calls_as_pipeline_call_documents() {
    on_every_runtime!(deadline_against_attempt_timeout);
}

// Extreme settings: a deadline of u64::MAX nanoseconds (the largest accepted), zero retry
// delays, one attempt, with days between calls; Duration::MAX is refused when built.
async fn extreme_settings<R: Runtime>(rt: Clocked<R>) {
    assert!(
        Pipeline::builder()
            .runtime(rt.clone())
            .deadline(Duration::MAX)
            .build()
            .is_err()
    );
    let huge = Duration::from_nanos(u64::MAX);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(huge)
        .retry(constant(Duration::ZERO, 5))
        .attempt_timeout(huge)
        .build()
        .unwrap();
    let layer = PipelineLayer::new(pipeline);
    for round in 0..3 {
        let failing = Probe::new(&rt, |_, _| 3, down);
        let tally = Arc::clone(&failing.tally);
        let start = rt.now();
        let answer = layer.layer(failing).oneshot(Req::new(round)).await;
        assert_eq!(answer, Err(Error::Inner("down")));
        assert_eq!(tally.calls(), 5);
        assert_eq!(rt.now() - start, 15 * MS, "no pause between attempts");
        let slow_ready = Probe::new(&rt, |_, _| 0, fine).ready_after(DAY);
        let start = rt.now();
        assert_eq!(
            layer.layer(slow_ready).oneshot(Req::new(round)).await,
            Ok(1)
        );
        assert_eq!(rt.now() - start, DAY);
        rt.sleep(3 * DAY).await;
    }
    // One attempt: never retried, never cloned twice.
    let once = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(Duration::ZERO, 1))
        .attempt_timeout(MS)
        .build()
        .unwrap();
    let failing = Probe::new(&rt, |_, _| 0, down);
    let tally = Arc::clone(&failing.tally);
    assert_eq!(
        PipelineLayer::new(once.clone())
            .layer(failing)
            .oneshot(Req::new(1))
            .await,
        Err(Error::Inner("down"))
    );
    assert_eq!(tally.calls(), 1);
    let instant = Probe::new(&rt, |_, _| 0, fine);
    assert_eq!(
        PipelineLayer::new(once)
            .layer(instant)
            .oneshot(Req::new(1))
            .await,
        Ok(1)
    );
}

#[test]
fn extreme_deadlines_zero_delays_and_single_attempts_work_across_idle_days() {
    on_every_runtime!(extreme_settings);
}

// A retry budget (ratio 0, 1 a second over 10 s: 10 retries a window) is drawn by the layer's
// retries, shared with a RetryLayer above, and refills after days of idleness.
async fn retries_consume_the_budget<R: Runtime>(rt: Clocked<R>) {
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.0)
        .min_per_second(1)
        .build()
        .unwrap();
    let budget = RetryBudget::new(policy, rt.now());
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(MS, 4))
        .retry_budget(budget.clone())
        .build()
        .unwrap();
    let failing = Probe::new(&rt, |_, _| 1, down);
    let tally = Arc::clone(&failing.tally);
    let service = PipelineLayer::new(pipeline).layer(failing);
    for id in 0..10 {
        let _ = service.clone().oneshot(Req::new(id)).await;
    }
    assert_eq!(tally.calls(), 10 + 10, "ten retries, then none");
    for id in 0..5 {
        let _ = service.clone().oneshot(Req::new(id)).await;
    }
    assert_eq!(tally.calls(), 25, "the budget is spent");

    rt.sleep(3 * DAY).await;
    for id in 0..10 {
        let _ = service.clone().oneshot(Req::new(id)).await;
    }
    assert_eq!(tally.calls(), 25 + 20, "a new window, ten retries again");

    // Shared with a RetryLayer above: ten retries between them.
    rt.sleep(3 * DAY).await;
    let before = tally.calls();
    let stacked = ServiceBuilder::new()
        .layer(
            RetryLayer::new(constant(MS, 4))
                .runtime(rt.clone())
                .budget(budget.clone()),
        )
        .service(service.clone());
    for id in 0..5 {
        let _ = stacked.clone().oneshot(Req::new(id)).await;
    }
    assert_eq!(tally.calls() - before, 5 + 10);
}

#[test]
fn a_pipeline_layers_retries_draw_from_the_retry_budget() {
    on_every_runtime!(retries_consume_the_budget);
}

// Days of idleness between calls: the breaker's break ends, the limiter refills to its burst
// (not beyond), and nothing overflows.
async fn long_idle_gaps<R: Runtime>(rt: Clocked<R>) {
    let limiter = RateLimiter::builder(1, Duration::from_secs(3_600))
        .runtime(rt.clone())
        .burst(1)
        .build()
        .unwrap();
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(Duration::from_secs(3_600))
        .max_half_open_wait(None)
        .build()
        .unwrap();
    let bulkhead = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(Duration::from_secs(1))
        .rate_limit(limiter)
        .bulkhead(bulkhead.clone())
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |_, _| 1, |n| if n == 1 { Err("down") } else { Ok(n) });
    let tally = Arc::clone(&probe.tally);
    let service = PipelineLayer::new(pipeline).layer(probe);
    assert_eq!(
        service.clone().oneshot(Req::new(1)).await,
        Err(Error::Inner("down"))
    );
    assert_eq!(breaker.state(), State::Open);
    for round in 0..3 {
        rt.sleep(3 * DAY + MS * round).await;
        assert_eq!(service.clone().oneshot(Req::new(2)).await, Ok(2 + round));
        assert_eq!(breaker.state(), State::Closed);
        // The limiter's burst of one is spent: an hour's wait does not fit the 1 s deadline.
        let start = rt.now();
        let refused = service.clone().oneshot(Req::new(3)).await;
        assert!(
            matches!(refused, Err(Error::Rejected(_))),
            "round {round}: {refused:?}"
        );
        assert!(rt.now() - start <= Duration::from_secs(1));
        assert_eq!(tally.calls(), 2 + round);
        assert_eq!(bulkhead.in_flight(), 0);
    }
}

#[test]
fn days_of_idleness_between_calls_change_nothing_but_the_clock() {
    on_every_runtime!(long_idle_gaps);
}

// === cancellation at seeded random points: capacity is conserved ===========================

fn script_of(
    rng: &mut Rng,
    healthy: &Arc<AtomicBool>,
) -> impl Fn(u32) -> (u64, bool) + Send + Sync + 'static {
    let table: Vec<(u64, bool)> = (0..257).map(|_| (rng.below(60), !rng.one_in(3))).collect();
    let healthy = Arc::clone(healthy);
    move |n: u32| {
        if healthy.load(SeqCst) {
            (1, true)
        } else {
            table[n as usize % table.len()]
        }
    }
}

/// Starts `calls` calls at random times, each cut at a random time or never; waits for all.
async fn storm<R, S>(rt: &Clocked<R>, rng: &mut Rng, service: &S, calls: u32)
where
    R: Runtime,
    S: Service<Req, Response = u32, Error = E> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut tasks = Vec::new();
    for id in 0..calls {
        let start = MS * u32::try_from(rng.below(200)).unwrap();
        let cut = (!rng.one_in(3)).then(|| MS * u32::try_from(rng.below(150)).unwrap());
        let service = service.clone();
        let rt2 = rt.clone();
        tasks.push(rt.spawn(async move {
            rt2.sleep(start).await;
            let call = service.oneshot(Req::new(id));
            match cut {
                Some(cut) => drop(call.timeout_on(&rt2, cut).await),
                None => drop(call.await),
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

// An AdmitLayer (WaitReady) above, a pipeline of every stage, an AdmitLayer (WaitReady) and a
// pool reserved in `poll_ready` below; calls dropped at seeded random points. Afterwards every
// bulkhead, queue, pool slot and attempt is back, and a healthy call goes through (a leaked
// half-open probe would refuse it: the half-open wait is unbounded).
async fn random_drops_static<R: Runtime>(rt: Clocked<R>) {
    for seed in [11, 12, 13] {
        let mut rng = Rng::new(seed);
        let healthy = Arc::new(AtomicBool::new(false));
        let pool = Pool::new(2);
        let pooled = Pooled::new(&rt, &pool, script_of(&mut rng, &healthy));
        let unready = Arc::clone(&pooled.unready_calls);
        let outer = Bulkhead::builder(3)
            .runtime(rt.clone())
            .max_queue(4)
            .max_wait(150 * MS)
            .build()
            .unwrap();
        let stage = Bulkhead::builder(2)
            .runtime(rt.clone())
            .max_queue(3)
            .max_wait(100 * MS)
            .build()
            .unwrap();
        let below = Bulkhead::builder(2)
            .runtime(rt.clone())
            .max_queue(8)
            .max_wait(None)
            .build()
            .unwrap();
        let limiter = RateLimiter::builder(200, Duration::from_secs(1))
            .runtime(rt.clone())
            .burst(20)
            .build()
            .unwrap();
        let breaker = CircuitBreaker::builder()
            .runtime(rt.clone())
            .consecutive_failures(4)
            .break_duration(30 * MS)
            .max_half_open_wait(None)
            .build()
            .unwrap();
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .deadline(250 * MS)
            .rate_limit(limiter)
            .bulkhead(stage.clone())
            .retry(constant(5 * MS, 3))
            .breaker(breaker.clone())
            .attempt_timeout(40 * MS)
            .build()
            .unwrap();
        let service = ServiceBuilder::new()
            .layer(AdmitLayer::new(outer.clone(), AdmitMode::WaitReady).runtime(rt.clone()))
            .layer(PipelineLayer::new(pipeline))
            .layer(AdmitLayer::new(below.clone(), AdmitMode::WaitReady).runtime(rt.clone()))
            .service(pooled);
        storm(&rt, &mut rng, &service, 30).await;
        rt.sleep(DAY).await;
        for (name, b) in [("outer", &outer), ("stage", &stage), ("below", &below)] {
            assert_eq!(
                (b.in_flight(), b.queued()),
                (0, 0),
                "seed {seed}: the {name} bulkhead"
            );
        }
        assert_eq!(pool.free(), 2, "seed {seed}: the pool");
        assert_eq!(unready.load(SeqCst), 0, "seed {seed}: called unready");
        healthy.store(true, SeqCst);
        let answer = service.clone().oneshot(Req::new(999)).await;
        assert_eq!(answer, Ok(999), "seed {seed}: state {:?}", breaker.state());
        assert_eq!(pool.free(), 2);
    }
}

#[test]
fn calls_dropped_at_random_points_give_back_every_permit_in_a_static_stack() {
    on_every_runtime!(random_drops_static);
}

const LIVE_BASE: &str = "[defaults.adaptive]\nalgorithm = \"aimd\"\ninitial_limit = 3\nmin_limit = 1\nmax_limit = 6\nmax_queue = 4\nmax_wait = \"100ms\"\n[defaults.bulkhead]\nmax_concurrent = 2\nmax_queue = 3\nmax_wait = \"100ms\"\n[instances.inv.retry]\nbackoff = \"constant\"\ninitial_delay = \"5ms\"\njitter = \"none\"\nmax_attempts = 3\n[instances.inv.breaker]\nconsecutive_failures = 4\nbreak_duration = \"30ms\"\nmax_half_open_wait = \"off\"\n[instances.inv.rate_limit]\ncount = 200\nperiod = \"1s\"\nburst = 20\n";

fn live_config(limiter: &str) -> Config {
    config(&format!(
        "{LIVE_BASE}[instances.inv]\ndeadline = \"250ms\"\nattempt_timeout = \"40ms\"\n{limiter} = {{}}\n"
    ))
}

// The same with a configured pipeline whose limiter a reload swaps between an adaptive limiter
// and a bulkhead while calls run and are dropped ("a reload that adds or removes a section
// adds or removes the stage").
async fn random_drops_live<R: Runtime>(rt: Clocked<R>) {
    for seed in [21, 22, 23] {
        let mut rng = Rng::new(seed);
        let registry = Arc::new(
            Registry::builder(live_config("adaptive"))
                .runtime(rt.clone())
                .build()
                .unwrap(),
        );
        let healthy = Arc::new(AtomicBool::new(false));
        let pool = Pool::new(2);
        let pooled = Pooled::new(&rt, &pool, script_of(&mut rng, &healthy));
        let service = ServiceBuilder::new()
            .layer(PipelineLayer::new(registry.pipeline("inv").unwrap()))
            .service(pooled);
        let adaptive = registry.adaptive_limiter("inv").unwrap();
        let reloads = {
            let registry = Arc::clone(&registry);
            let rt2 = rt.clone();
            let times: Vec<u64> = (0..6).map(|_| rng.below(40)).collect();
            rt.spawn(async move {
                for (i, pause) in times.into_iter().enumerate() {
                    rt2.sleep(MS * u32::try_from(pause).unwrap()).await;
                    let which = if i % 2 == 0 { "bulkhead" } else { "adaptive" };
                    registry.reload(live_config(which)).unwrap();
                }
            })
        };
        storm(&rt, &mut rng, &service, 30).await;
        reloads.await.unwrap();
        rt.sleep(DAY).await;
        let bulkhead = registry.bulkhead("inv").unwrap();
        assert_eq!(
            (adaptive.in_flight(), adaptive.queued()),
            (0, 0),
            "seed {seed}: the adaptive limiter"
        );
        assert_eq!(
            (bulkhead.in_flight(), bulkhead.queued()),
            (0, 0),
            "seed {seed}: the bulkhead"
        );
        assert_eq!(pool.free(), 2, "seed {seed}: the pool");
        healthy.store(true, SeqCst);
        assert_eq!(
            service.clone().oneshot(Req::new(7)).await,
            Ok(7),
            "seed {seed}"
        );
    }
}

#[test]
fn calls_dropped_at_random_points_across_reloads_give_back_every_permit() {
    on_every_runtime!(random_drops_live);
}

// Docs: "a service that queues in poll_ready (a Buffer, a concurrency limit) counts as a
// slower service: limit concurrency with the pipeline's bulkhead ... whose waits are not
// counted". A pool of one: the second call's readiness wait runs under the attempt timeout.
async fn queueing_in_poll_ready_is_slowness<R: Runtime>(rt: Clocked<R>) {
    let pool = Pool::new(1);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .attempt_timeout(30 * MS)
        .build()
        .unwrap();
    let slowish = Pooled::new(&rt, &pool, |_| (12, true));
    let service = PipelineLayer::new(pipeline).layer(slowish);
    let first = rt.spawn(service.clone().oneshot(Req::new(1)));
    let second = rt.spawn(service.clone().oneshot(Req::new(2)));
    let third = rt.spawn(service.clone().oneshot(Req::new(3)));
    let mut answers = [
        first.await.unwrap(),
        second.await.unwrap(),
        third.await.unwrap(),
    ];
    answers.sort_by_key(Result::is_err);
    assert_eq!(
        answers.iter().filter(|a| a.is_ok()).count(),
        2,
        "the last waited 24 ms for the pool and then 12 ms: past its 30 ms: {answers:?}"
    );
    assert_eq!(answers[2], Err(Error::TimedOut));
    assert_eq!(pool.free(), 1, "the abandoned wait let go");

    // The pipeline's bulkhead queues them instead, uncounted: all three answer.
    let bulkhead = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(4)
        .max_wait(DAY)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead.clone())
        .attempt_timeout(30 * MS)
        .build()
        .unwrap();
    let service = PipelineLayer::new(pipeline).layer(Pooled::new(&rt, &pool, |_| (12, true)));
    let start = rt.now();
    let calls: Vec<_> = (1..=3)
        .map(|id| rt.spawn(service.clone().oneshot(Req::new(id))))
        .collect();
    for (id, call) in (1..=3).zip(calls) {
        assert_eq!(call.await.unwrap(), Ok(id));
    }
    assert_eq!(rt.now() - start, 36 * MS);
    assert_eq!((bulkhead.in_flight(), pool.free()), (0, 1));
}

#[test]
fn a_service_queueing_in_poll_ready_counts_as_a_slower_service() {
    on_every_runtime!(queueing_in_poll_ready_is_slowness);
}

// === sharing ================================================================================

// "A layer running requests through `pipeline`, shared by every service it makes": two
// services of one layer share its breaker, and clones of a service share it too.
async fn one_pipeline_for_every_service<R: Runtime>(rt: Clocked<R>) {
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(2)
        .break_duration(DAY)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let layer = PipelineLayer::new(pipeline);
    let failing = layer.layer(Probe::new(&rt, |_, _| 1, down));
    let healthy_probe = Probe::new(&rt, |_, _| 1, fine);
    let healthy_tally = Arc::clone(&healthy_probe.tally);
    let healthy = layer.clone().layer(healthy_probe);
    let _ = failing.clone().oneshot(Req::new(1)).await;
    let _ = failing.clone().oneshot(Req::new(2)).await;
    assert_eq!(breaker.state(), State::Open);
    assert!(matches!(
        healthy.clone().oneshot(Req::new(3)).await,
        Err(Error::Rejected(Rejected::CircuitOpen { .. }))
    ));
    assert_eq!(healthy_tally.calls(), 0);
    // The inner service is reachable.
    let mut healthy = healthy;
    assert_eq!(healthy.get_ref().tally.calls(), 0);
    assert_eq!(healthy.get_mut().tally.calls(), 0);
    assert_eq!(healthy.into_inner().tally.calls(), 0);
}

#[test]
fn every_service_of_a_layer_and_its_clones_share_the_pipeline() {
    on_every_runtime!(one_pipeline_for_every_service);
}

// "the same stages, order, classifier and metrics as Pipeline::call": a listener sees the same
// events from a call through the layer as from `Pipeline::call` with the same script.
async fn the_same_events_as_pipeline_call<R: Runtime>(rt: Clocked<R>) {
    for fails in [1, 2, 5] {
        let (events, listener) = pipeline_events();
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .retry(constant(10 * MS, 3))
            .on_event(listener)
            .build()
            .unwrap();
        let mut n = 0;
        let direct = pipeline
            .call(|| {
                n += 1;
                let fail = n <= fails;
                let wait = rt.sleep(5 * MS);
                async move {
                    wait.await;
                    if fail { Err("down") } else { Ok(n) }
                }
            })
            .await;
        let seen_direct = std::mem::take(&mut *events.lock().unwrap());
        let probe = Probe::new(
            &rt,
            |_, _| 5,
            move |n| if n <= fails { Err("down") } else { Ok(n) },
        );
        let layered = PipelineLayer::new(pipeline)
            .layer(probe)
            .oneshot(Req::new(1))
            .await;
        let seen_layered = events.lock().unwrap().clone();
        assert_eq!(
            direct.map_err(|e| format!("{e:?}")),
            layered.map_err(|e| format!("{e:?}"))
        );
        assert!(!seen_direct.is_empty());
        assert_eq!(seen_direct, seen_layered, "{fails} failures");
    }
}

#[test]
fn a_call_through_the_layer_tells_the_listener_what_pipeline_call_tells_it() {
    on_every_runtime!(the_same_events_as_pipeline_call);
}

// A whole stack under one name: BoxCloneService over Timeout, Retry, a configured pipeline and
// an AdmitLayer (WaitCall), one error type `Error<E>`.
async fn a_stored_stack<R: Runtime>(rt: Clocked<R>) {
    let registry = Registry::builder(config(
        "[instances.api]\ndeadline = \"1s\"\n[instances.api.retry]\nbackoff = \"constant\"\ninitial_delay = \"1ms\"\njitter = \"none\"\nmax_attempts = 2\n",
    ))
    .runtime(rt.clone())
    .build()
    .unwrap();
    let below = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(2)
        .build()
        .unwrap();
    let probe = Probe::new(
        &rt,
        |_, _| 10,
        |n| if n % 3 == 0 { Ok(n) } else { Err("down") },
    );
    let tally = Arc::clone(&probe.tally);
    let stack = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(5)).runtime(rt.clone()))
        .layer(RetryLayer::new(constant(MS, 2)).runtime(rt.clone()))
        .layer(PipelineLayer::new(registry.pipeline("api").unwrap()))
        .layer(AdmitLayer::new(below.clone(), AdmitMode::WaitCall).runtime(rt.clone()))
        .service(probe);
    let stored: BoxCloneService<Req, u32, E> = BoxCloneService::new(stack);
    assert_eq!(stored.clone().oneshot(Req::new(1)).await, Ok(3));
    assert_eq!(tally.calls(), 3);
    let failing: BoxCloneService<Req, u32, E> = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(RetryLayer::new(constant(MS, 2)).runtime(rt.clone()))
            .layer(PipelineLayer::new(registry.pipeline("api").unwrap()))
            .service(Probe::new(&rt, |_, _| 1, down)),
    );
    assert_eq!(
        failing.oneshot(Req::new(1)).await,
        Err(Error::Inner("down")),
        "one level, however deep"
    );
    assert_eq!(below.in_flight(), 0);
}

#[test]
fn a_stack_with_a_pipeline_layer_is_stored_as_one_box_clone_service() {
    on_every_runtime!(a_stored_stack);
}

// === LivePipeline: reloads =====================================================================

fn retry_text(name: &str, attempts: u32, extra: &str) -> String {
    format!(
        "[instances.{name}]\ndeadline = \"10s\"\n{extra}[instances.{name}.retry]\nbackoff = \"constant\"\ninitial_delay = \"10ms\"\njitter = \"none\"\nmax_attempts = {attempts}\n"
    )
}

// "a call started before it keeps the deadline, timeouts and retry schedule it started with":
// the retry schedule and the attempt timeout, through the layer.
async fn a_running_call_keeps_its_schedule<R: Runtime>(rt: Clocked<R>) {
    let registry = Registry::builder(config(&retry_text("a", 5, "attempt_timeout = \"100ms\"\n")))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let layer = PipelineLayer::new(registry.pipeline("a").unwrap());
    let failing = Probe::new(&rt, |_, _| 1, down);
    let tally = Arc::clone(&failing.tally);
    let service = layer.layer(failing);
    let start = rt.now();
    let running = rt.spawn(service.clone().oneshot(Req::new(1)));
    rt.sleep(15 * MS).await;
    registry
        .reload(config(&retry_text("a", 1, "attempt_timeout = \"10ms\"\n")))
        .unwrap();
    assert_eq!(running.await.unwrap(), Err(Error::Inner("down")));
    assert_eq!(tally.of(1), 5, "the 5 attempts it started with");
    assert_eq!(rt.now() - start, 45 * MS);
    let _ = service.clone().oneshot(Req::new(2)).await;
    assert_eq!(tally.of(2), 1, "the next call: one attempt");

    // A 50 ms service started under the 100 ms timeout, reloaded to 10 ms as it runs.
    registry
        .reload(config(&retry_text("a", 1, "attempt_timeout = \"100ms\"\n")))
        .unwrap();
    let slow = layer.layer(Probe::new(&rt, |_, _| 50, fine));
    let running = rt.spawn(slow.clone().oneshot(Req::new(3)));
    rt.sleep(5 * MS).await;
    registry
        .reload(config(&retry_text("a", 1, "attempt_timeout = \"10ms\"\n")))
        .unwrap();
    assert_eq!(running.await.unwrap(), Ok(1));
    assert_eq!(slow.oneshot(Req::new(4)).await, Err(Error::TimedOut));
}

#[test]
fn a_call_running_across_a_reload_keeps_its_retry_schedule_and_attempt_timeout() {
    on_every_runtime!(a_running_call_keeps_its_schedule);
}

// "the policies it passes through (the breaker ...) are the registry's shared ones and take
// their new settings at once ... (its next attempt may meet a breaker the new thresholds
// opened)".
async fn a_running_call_meets_the_new_breaker<R: Runtime>(rt: Clocked<R>) {
    let text = |failures: u32| {
        retry_text(
            "a",
            5,
            &format!(
                "[instances.a.breaker]\nconsecutive_failures = {failures}\nbreak_duration = \"1h\"\n"
            ),
        )
        .replace("deadline = \"10s\"", "deadline = \"1s\"")
    };
    let registry = Registry::builder(config(&text(100)))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let layer = PipelineLayer::new(registry.pipeline("a").unwrap());
    let failing = Probe::new(&rt, |_, _| 1, down);
    let tally = Arc::clone(&failing.tally);
    let service = layer.layer(failing);
    assert_eq!(
        service.clone().oneshot(Req::new(1)).await,
        Err(Error::Inner("down"))
    );
    assert_eq!(tally.of(1), 5, "no reload: five attempts");

    let running = rt.spawn(service.clone().oneshot(Req::new(2)));
    rt.sleep(15 * MS).await;
    registry.reload(config(&text(1))).unwrap();
    let answer = running.await.unwrap();
    assert!(
        matches!(answer, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{answer:?}"
    );
    assert!((2..=3).contains(&tally.of(2)), "{}", tally.of(2));
    assert_eq!(registry.breaker("a").unwrap().state(), State::Open);
}

#[test]
fn a_call_running_across_a_reload_meets_the_shared_breakers_new_thresholds() {
    on_every_runtime!(a_running_call_meets_the_new_breaker);
}

// "A reload that adds or removes a section adds or removes the stage", through a service made
// before any of the reloads; a reload that removes the instance is refused and the layer keeps
// working.
async fn sections_come_and_go<R: Runtime>(rt: Clocked<R>) {
    let registry = Registry::builder(config("[instances.a]\ndeadline = \"1s\"\n"))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let layer = PipelineLayer::new(registry.pipeline("a").unwrap());
    let probe = Probe::new(
        &rt,
        |_, _| 1,
        |n| if n % 2 == 1 { Err("down") } else { Ok(n) },
    );
    let tally = Arc::clone(&probe.tally);
    let service = layer.layer(probe);
    assert_eq!(
        service.clone().oneshot(Req::new(1)).await,
        Err(Error::Inner("down"))
    );

    registry
        .reload(config(
            "[instances.a]\ndeadline = \"1s\"\n[instances.a.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n",
        ))
        .unwrap();
    let bulkhead = registry.bulkhead("a").unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    assert_eq!(
        service.clone().oneshot(Req::new(2)).await,
        Err(Error::Rejected(Rejected::BulkheadFull))
    );
    assert_eq!(tally.calls(), 1);

    registry
        .reload(config(
            "[defaults.bulkhead]\nmax_concurrent = 1\n[instances.a]\ndeadline = \"1s\"\n[instances.a.breaker]\n",
        ))
        .unwrap();
    registry.breaker("a").unwrap().force_open();
    assert!(matches!(
        service.clone().oneshot(Req::new(3)).await,
        Err(Error::Rejected(Rejected::CircuitOpen { .. }))
    ));
    assert_eq!(
        tally.calls(),
        1,
        "the bulkhead stage is gone, the breaker's is there"
    );

    registry
        .reload(config(&retry_text(
            "a",
            3,
            "[defaults.bulkhead]\nmax_concurrent = 1\n[defaults.breaker]\n",
        )))
        .unwrap();
    assert_eq!(service.clone().oneshot(Req::new(4)).await, Ok(2));
    assert_eq!(
        tally.calls(),
        2,
        "neither stage: the held permit and forced breaker pass"
    );
    // The retry section added: "down" is retried.
    assert_eq!(service.clone().oneshot(Req::new(5)).await, Ok(4));
    assert_eq!(tally.of(5), 2);
    drop(held);

    // A reload removing the instance is refused; the old configuration stays in force.
    assert!(registry.reload(config("[instances.b]\n")).is_err());
    assert_eq!(service.clone().oneshot(Req::new(6)).await, Ok(6));
    assert_eq!(tally.of(6), 2);
}

#[test]
fn a_reload_adding_or_removing_a_section_adds_or_removes_the_stage_in_the_layer() {
    on_every_runtime!(sections_come_and_go);
}

// Threads reload while calls run: each call keeps one retry schedule (2 or 5 attempts, never
// a mix), and after the last reload every call has its settings.
async fn threads_reload_while_calls_run<R: Runtime>(rt: Clocked<R>) {
    let text = |attempts: u32| {
        retry_text("a", attempts, "").replace("initial_delay = \"10ms\"", "initial_delay = \"1ms\"")
    };
    let registry = Arc::new(
        Registry::builder(config(&text(2)))
            .runtime(rt.clone())
            .build()
            .unwrap(),
    );
    let service =
        PipelineLayer::new(registry.pipeline("a").unwrap()).layer(Probe::new(&rt, |_, _| 1, down));
    let tally = Arc::clone(&service.get_ref().tally);
    let done = Arc::new(AtomicBool::new(false));
    let reloaders: Vec<_> = (0..2)
        .map(|t| {
            let registry = Arc::clone(&registry);
            let done = Arc::clone(&done);
            let (two, five) = (text(2), text(5));
            std::thread::spawn(move || {
                for i in 0..150 {
                    let text = if (i + t) % 2 == 0 { &five } else { &two };
                    registry.reload(Config::from_toml(text).unwrap()).unwrap();
                    std::thread::yield_now();
                }
                done.store(true, SeqCst);
            })
        })
        .collect();
    let mut id = 0;
    let mut rounds = 0;
    while !done.load(SeqCst) || rounds < 3 {
        rounds += 1;
        let calls: Vec<_> = (0..4)
            .map(|_| {
                id += 1;
                rt.spawn(service.clone().oneshot(Req::new(id)))
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), Err(Error::Inner("down")));
        }
    }
    for reloader in reloaders {
        reloader.join().unwrap();
    }
    for call in 1..=id {
        let attempts = tally.of(call);
        assert!(
            attempts == 2 || attempts == 5,
            "call {call}: {attempts} attempts"
        );
    }
    registry.reload(config(&text(5))).unwrap();
    let _ = service.clone().oneshot(Req::new(id + 1)).await;
    assert_eq!(tally.of(id + 1), 5);
    assert_eq!(tally.live(), 0);
}

#[test]
fn threads_reloading_while_calls_run_give_each_call_one_schedule() {
    on_every_runtime!(threads_reload_while_calls_run);
}

// === HedgeLayer::live ==========================================================================

fn hedge_text(extra: &str) -> String {
    format!("[instances.s.hedge]\n{extra}")
}

/// A probe whose first copy of each request takes 100 ms and every later copy 5 ms.
fn first_copy_stuck<R: Clock>(rt: &R) -> Probe<R> {
    Probe::new(rt, |_, k| if k == 1 { 100 } else { 5 }, one)
}

// LiveHedge docs: "gives the calls that start after it the new delay and number of hedges; a
// call already running keeps the ones it started with"; HedgeLayer::live "follows every
// reload"; HedgeLayer::new(handle.hedge()) "keeps the hedge in force when the layer is made".
async fn a_live_hedge_layer_and_running_calls<R: Runtime>(rt: Clocked<R>) {
    let registry = Registry::builder(config(&hedge_text("delay = \"20ms\"\nmax_hedges = 1\n")))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let live = HedgeLayer::live(registry.hedge("s").unwrap());
    let fixed = HedgeLayer::new(registry.hedge("s").unwrap().hedge());
    let probe = first_copy_stuck(&rt);
    let tally = Arc::clone(&probe.tally);
    // Made before any reload, and through a clone of the layer.
    let service = live.clone().layer(probe.clone());
    let fixed_service = fixed.layer(probe);
    let timed = |service: &tidewall::tower::HedgeService<Probe<Clocked<R>>, Clocked<R>>, id| {
        let call = service.clone().oneshot(Req::new(id));
        let rt = rt.clone();
        async move {
            let start = rt.now();
            let answer = call.await;
            (answer, ms_of(rt.now() - start))
        }
    };

    // Started under one hedge at 20 ms; the reload to none comes at 5 ms.
    let running = rt.spawn(timed(&service, 1));
    rt.sleep(5 * MS).await;
    registry
        .reload(config(&hedge_text("delay = \"20ms\"\nmax_hedges = 0\n")))
        .unwrap();
    assert_eq!(running.await.unwrap(), (Ok(1), 25));
    assert_eq!(tally.of(1), 2, "the running call kept its hedge");
    assert_eq!(live.hedge().max_hedges(), 0);
    assert_eq!(timed(&service, 2).await, (Ok(1), 100));
    assert_eq!(tally.of(2), 1, "the next call has none");
    assert_eq!(
        timed(&fixed_service, 3).await,
        (Ok(1), 25),
        "new() keeps its hedge"
    );

    // Started with none; the reload to a 10 ms hedge comes at 15 ms.
    let running = rt.spawn(timed(&service, 4));
    rt.sleep(15 * MS).await;
    registry
        .reload(config(&hedge_text("delay = \"10ms\"\nmax_hedges = 1\n")))
        .unwrap();
    assert_eq!(running.await.unwrap(), (Ok(1), 100));
    assert_eq!(tally.of(4), 1);
    assert_eq!(live.hedge().delay(), 10 * MS);
    assert_eq!(timed(&service, 5).await, (Ok(1), 15));
    assert_eq!(tally.of(5), 2);
    assert_eq!(tally.live(), 0);
}

#[test]
fn a_live_hedge_layer_follows_reloads_and_running_calls_keep_their_hedge() {
    on_every_runtime!(a_live_hedge_layer_and_running_calls);
}

// HedgeLayer::live "judges responses with the handle's classifier" (kept across reloads);
// HedgeLayer::new(handle.hedge()) gets a `Hedge<R>`, the default classifier. An error the
// classifier calls final ends the call with one copy; by default an error starts the next copy
// at once.
async fn the_handles_classifier<R: Runtime>(rt: Clocked<R>) {
    let registry = Registry::builder(config(&hedge_text("delay = \"20ms\"\nmax_hedges = 2\n")))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let not_found = || Probe::new(&rt, |_, _| 1, |_| Err("not found"));
    let judged = registry
        .hedge("s")
        .unwrap()
        .classify(ErrorsWhere(overloaded_only));

    let probe = not_found();
    let tally = Arc::clone(&probe.tally);
    let answer = HedgeLayer::live(judged.clone())
        .layer(probe)
        .oneshot(Req::new(1))
        .await;
    assert_eq!((answer, tally.calls()), (Err(Error::Inner("not found")), 1));

    let probe = not_found();
    let tally = Arc::clone(&probe.tally);
    let answer = HedgeLayer::new(judged.hedge())
        .layer(probe)
        .oneshot(Req::new(1))
        .await;
    assert_eq!(
        (answer, tally.calls()),
        (Err(Error::Inner("not found")), 3),
        "`hedge()` is a `Hedge<R>`: the default classifier"
    );

    let probe = not_found();
    let tally = Arc::clone(&probe.tally);
    let answer = HedgeLayer::live(registry.hedge("s").unwrap())
        .layer(probe)
        .oneshot(Req::new(1))
        .await;
    assert_eq!((answer, tally.calls()), (Err(Error::Inner("not found")), 3));

    // The classifier is kept across a reload.
    registry
        .reload(config(&hedge_text("delay = \"5ms\"\nmax_hedges = 3\n")))
        .unwrap();
    let probe = not_found();
    let tally = Arc::clone(&probe.tally);
    let answer = HedgeLayer::live(judged)
        .layer(probe)
        .oneshot(Req::new(1))
        .await;
    assert_eq!((answer, tally.calls()), (Err(Error::Inner("not found")), 1));
}

#[test]
fn a_live_hedge_layer_judges_with_the_handles_classifier_across_reloads() {
    on_every_runtime!(the_handles_classifier);
}

// A reload that adds the `[hedge]` section, then removes it: the layer follows (the defaults:
// 100 ms, one hedge).
async fn the_hedge_section_comes_and_goes<R: Runtime>(rt: Clocked<R>) {
    let registry = Registry::builder(config("[instances.s]\ndeadline = \"1s\"\n"))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let live = HedgeLayer::live(registry.hedge("s").unwrap());
    let service = live.layer(Probe::new(&rt, |_, k| if k == 1 { 500 } else { 5 }, one));
    let tally = Arc::clone(&service.get_ref().tally);
    assert_eq!(
        (live.hedge().delay(), live.hedge().max_hedges()),
        (100 * MS, 1)
    );
    let timed = |id| {
        let call = service.clone().oneshot(Req::new(id));
        let rt = rt.clone();
        async move {
            let start = rt.now();
            let answer = call.await;
            (answer, ms_of(rt.now() - start))
        }
    };
    assert_eq!(timed(1).await, (Ok(1), 105));
    registry
        .reload(config(
            "[instances.s]\ndeadline = \"1s\"\n[instances.s.hedge]\nmax_hedges = 0\n",
        ))
        .unwrap();
    assert_eq!(timed(2).await, (Ok(1), 500));
    assert_eq!(tally.of(2), 1);
    registry
        .reload(config("[instances.s]\ndeadline = \"1s\"\n"))
        .unwrap();
    assert_eq!(
        (live.hedge().delay(), live.hedge().max_hedges()),
        (100 * MS, 1)
    );
    assert_eq!(timed(3).await, (Ok(1), 105));
    assert_eq!(tally.of(3), 2);
}

#[test]
fn a_live_hedge_layer_follows_a_reload_that_adds_or_removes_the_hedge_section() {
    on_every_runtime!(the_hedge_section_comes_and_goes);
}

// Threads flip the hedge between none and one at 20 ms while hedged calls run: each call has
// one or the other, whole (100 ms with one copy, or 25 ms with two).
async fn threads_reload_the_hedge<R: Runtime>(rt: Clocked<R>) {
    let none = hedge_text("delay = \"20ms\"\nmax_hedges = 0\n");
    let one = hedge_text("delay = \"20ms\"\nmax_hedges = 1\n");
    let registry = Arc::new(
        Registry::builder(config(&none))
            .runtime(rt.clone())
            .build()
            .unwrap(),
    );
    let service = HedgeLayer::live(registry.hedge("s").unwrap()).layer(first_copy_stuck(&rt));
    let tally = Arc::clone(&service.get_ref().tally);
    let done = Arc::new(AtomicBool::new(false));
    let reloader = {
        let registry = Arc::clone(&registry);
        let done = Arc::clone(&done);
        let (none, one) = (none.clone(), one.clone());
        std::thread::spawn(move || {
            for i in 0..200 {
                let text = if i % 2 == 0 { &one } else { &none };
                registry.reload(Config::from_toml(text).unwrap()).unwrap();
                std::thread::yield_now();
            }
            done.store(true, SeqCst);
        })
    };
    let mut id = 0;
    let mut rounds = 0;
    while !done.load(SeqCst) || rounds < 3 {
        rounds += 1;
        let calls: Vec<_> = (0..4)
            .map(|_| {
                id += 1;
                let call = service.clone().oneshot(Req::new(id));
                let rt2 = rt.clone();
                let me = id;
                rt.spawn(async move {
                    let start = rt2.now();
                    let answer = call.await;
                    (me, answer, ms_of(rt2.now() - start))
                })
            })
            .collect();
        for call in calls {
            let (me, answer, took) = call.await.unwrap();
            assert_eq!(answer, Ok(1));
            let copies = tally.of(me);
            assert!(
                (copies, took) == (1, 100) || (copies, took) == (2, 25),
                "call {me}: {copies} copies in {took} ms"
            );
        }
    }
    reloader.join().unwrap();
    assert_eq!(tally.live(), 0);
}

#[test]
fn threads_reloading_the_hedge_while_calls_run_give_each_call_one_hedge() {
    on_every_runtime!(threads_reload_the_hedge);
}

// A live pipeline inside a live hedge, both following one registry: a reload of both sections
// reaches the next call through both layers.
async fn live_hedge_over_live_pipeline<R: Runtime>(rt: Clocked<R>) {
    let text = |hedges: u32, attempts: u32| {
        format!(
            "{}[instances.a.hedge]\ndelay = \"20ms\"\nmax_hedges = {hedges}\n",
            retry_text("a", attempts, "")
        )
    };
    let registry = Registry::builder(config(&text(1, 1)))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let probe = Probe::new(&rt, |_, _| 1, down);
    let tally = Arc::clone(&probe.tally);
    let service = ServiceBuilder::new()
        .layer(HedgeLayer::live(registry.hedge("a").unwrap()))
        .layer(PipelineLayer::new(registry.pipeline("a").unwrap()))
        .service(probe);
    // One hedge, one attempt each: 2 calls.
    let _ = service.clone().oneshot(Req::new(1)).await;
    assert_eq!(tally.of(1), 2);
    registry.reload(config(&text(2, 3))).unwrap();
    let _ = service.clone().oneshot(Req::new(2)).await;
    assert_eq!(tally.of(2), 9, "three copies of three attempts");
    registry.reload(config(&text(0, 2))).unwrap();
    let _ = service.clone().oneshot(Req::new(3)).await;
    assert_eq!(tally.of(3), 2);
}

#[test]
fn a_live_hedge_layer_over_a_live_pipeline_layer_follows_one_registry() {
    on_every_runtime!(live_hedge_over_live_pipeline);
}
