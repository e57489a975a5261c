#![cfg(all(feature = "tower", feature = "toml"))]
//! Hostile black-box tests of how a `PipelineLayer` gets each attempt's request
//! (`clone_requests`, `CloneRequest`, `ByClone`, `NoClone`), written from the rustdoc only:
//! copiers that stop at the first, a middle or the last ask, that count their asks, that share
//! state across concurrent calls; every pipeline stage; configured pipelines reloaded between
//! and during calls (from another thread too); nested layers and other Tidewall tower layers;
//! extreme schedules and idle gaps. Every scenario runs on every runtime, in virtual time.

mod clone_support;
mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use clone_support::Tagged;
use common::rng::Rng;
use tidewall::breaker::CircuitBreaker;
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::Verdict;
use tidewall::config::{Config, Registry};
use tidewall::pipeline::Pipeline;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::testing::Clocked;
use tidewall::tower::{AdmitLayer, AdmitMode, PipelineLayer, RetryLayer, TimeoutLayer};
use tidewall::tower::{ByClone, CloneRequest, NoClone};
use tidewall::{Backoff, Error, Jitter, Rejected};
use tower::ServiceExt as _;
use tower::util::BoxCloneService;
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

// --- requests that know where they came from ------------------------------------------------

/// What the service records of a request.
trait Tag {
    fn tag(&self) -> (u32, u32);
    fn attempted(&self) {}
}

impl Tag for Tagged {
    fn tag(&self) -> (u32, u32) {
        (self.id, self.generation)
    }

    fn attempted(&self) {
        self.attempts.fetch_add(1, SeqCst);
    }
}

impl Tag for u32 {
    fn tag(&self) -> (u32, u32) {
        (*self, 0)
    }
}

/// A copier whose every ask is counted (shared by every clone, so across calls): `plan(n)`
/// says whether to copy at the `n`th ask; `seen` has the generation of each request asked
/// about.
#[derive(Clone)]
struct Copier {
    asks: Arc<AtomicU32>,
    seen: Arc<Mutex<Vec<u32>>>,
    plan: Arc<dyn Fn(u32) -> bool + Send + Sync>,
}

impl Copier {
    fn new(plan: impl Fn(u32) -> bool + Send + Sync + 'static) -> Self {
        Self {
            asks: Arc::new(AtomicU32::new(0)),
            seen: Arc::new(Mutex::new(Vec::new())),
            plan: Arc::new(plan),
        }
    }

    fn always() -> Self {
        Self::new(|_| true)
    }

    /// Copies at the first `n - 1` asks and refuses the `n`th.
    fn refusing_at(n: u32) -> Self {
        Self::new(move |ask| ask < n)
    }

    fn asks(&self) -> u32 {
        self.asks.load(SeqCst)
    }

    fn seen(&self) -> Vec<u32> {
        self.seen.lock().unwrap().clone()
    }
}

impl CloneRequest<Tagged> for Copier {
    fn clone_request(&self, request: &Tagged) -> Option<Tagged> {
        let n = self.asks.fetch_add(1, SeqCst) + 1;
        request.asks.fetch_add(1, SeqCst);
        self.seen.lock().unwrap().push(request.generation);
        (self.plan)(n).then(|| request.copy(n))
    }
}

// --- a scripted service ---------------------------------------------------------------------

type Answer = Arc<dyn Fn(u32) -> (Duration, Result<u32, &'static str>) + Send + Sync>;

/// Answers its `n`th request (from 1) as `answer(n)` says, after the time it says; records
/// each request's `(id, generation)`, counts its own clones and its attempts still running.
struct Svc<R> {
    rt: R,
    answer: Answer,
    log: Arc<Mutex<Vec<(u32, u32)>>>,
    calls: Arc<AtomicU32>,
    clones: Arc<AtomicU32>,
    running: Arc<AtomicI64>,
}

impl<R: Clone> Clone for Svc<R> {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, SeqCst);
        Self {
            rt: self.rt.clone(),
            answer: Arc::clone(&self.answer),
            log: Arc::clone(&self.log),
            calls: Arc::clone(&self.calls),
            clones: Arc::clone(&self.clones),
            running: Arc::clone(&self.running),
        }
    }
}

impl<R> Svc<R> {
    fn new(
        rt: &R,
        answer: impl Fn(u32) -> (Duration, Result<u32, &'static str>) + Send + Sync + 'static,
    ) -> Self
    where
        R: Clone,
    {
        Self {
            rt: rt.clone(),
            answer: Arc::new(answer),
            log: Arc::new(Mutex::new(Vec::new())),
            calls: Arc::new(AtomicU32::new(0)),
            clones: Arc::new(AtomicU32::new(0)),
            running: Arc::new(AtomicI64::new(0)),
        }
    }

    fn calls(&self) -> u32 {
        self.calls.load(SeqCst)
    }

    /// The generations sent, in order.
    fn generations(&self) -> Vec<u32> {
        self.log.lock().unwrap().iter().map(|t| t.1).collect()
    }

    fn running(&self) -> i64 {
        self.running.load(SeqCst)
    }
}

/// Decrements the count of attempts still running when the attempt ends or is dropped.
struct Running(Arc<AtomicI64>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl<R: Clock, Req: Tag + Send + 'static> Service<Req> for Svc<R> {
    type Response = u32;
    type Error = E;
    type Future = Pin<Box<dyn Future<Output = Result<u32, E>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let n = self.calls.fetch_add(1, SeqCst) + 1;
        self.log.lock().unwrap().push(request.tag());
        request.attempted();
        let (delay, answer) = (self.answer)(n);
        let wait = (!delay.is_zero()).then(|| self.rt.sleep(delay));
        self.running.fetch_add(1, SeqCst);
        let running = Running(Arc::clone(&self.running));
        Box::pin(async move {
            let _running = running;
            if let Some(wait) = wait {
                wait.await;
            }
            // Held until the answer: a request is in use for the whole attempt.
            drop(request);
            answer.map_err(Error::Inner)
        })
    }
}

/// Always fails after `d`.
fn down(d: Duration) -> impl Fn(u32) -> (Duration, Result<u32, &'static str>) {
    move |_| (d, Err("down"))
}

/// Fails after `d` until its `k`th request, which answers `Ok(k)`.
fn up_at(k: u32, d: Duration) -> impl Fn(u32) -> (Duration, Result<u32, &'static str>) {
    move |n| (d, if n >= k { Ok(n) } else { Err("down") })
}

/// Judges a 503 `Ok` a retryable failure, as every error; other `Ok`s succeed.
fn classify_503(result: Result<&u32, &E>) -> Verdict {
    match result {
        Ok(503) | Err(_) => Verdict::RetryableFailure,
        Ok(_) => Verdict::Success,
    }
}

/// Polls `inner` at most `polls` times, then drops it and yields `None`: a call dropped at
/// a chosen poll point.
struct DropAfter<F> {
    inner: Option<Pin<Box<F>>>,
    polls: u32,
}

impl<F: Future> Future for DropAfter<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.polls == 0 {
            self.inner = None;
            return Poll::Ready(None);
        }
        self.polls -= 1;
        let inner = self.inner.as_mut().expect("polled after the end");
        match inner.as_mut().poll(cx) {
            Poll::Ready(v) => {
                self.inner = None;
                Poll::Ready(Some(v))
            }
            Poll::Pending => {
                if self.polls == 0 {
                    self.inner = None;
                    return Poll::Ready(None);
                }
                Poll::Pending
            }
        }
    }
}

// === what a copier is asked, and what is sent ================================================

/// Docs: "`Some(copy)` is sent and the request kept for a later attempt ... The last possible
/// attempt sends the request itself without asking." Four failing attempts: copies 1, 2, 3
/// go out, then the original; the copier is only ever shown the original, and asked three
/// times; nothing is leaked.
async fn copies_then_the_original<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(10 * MS, 4))
        .build()
        .unwrap();
    let copier = Copier::always();
    let svc = Svc::new(&rt, down(MS));
    let start = rt.now();
    let answer = PipelineLayer::new(pipeline)
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(answer, Err(Error::Inner("down")));
    assert_eq!(svc.generations(), [1, 2, 3, 0], "copies, then the original");
    assert_eq!(copier.asks(), 3, "the last possible attempt asks nothing");
    assert_eq!(copier.seen(), [0, 0, 0], "asked about the original only");
    assert_eq!(rt.now() - start, 4 * MS + 3 * 10 * MS);
    assert_eq!(live.load(SeqCst), 0, "every copy and the original dropped");
    assert_eq!(svc.running(), 0);
}

#[test]
fn copies_go_out_first_and_the_last_attempt_sends_the_original() {
    on_every_runtime!(copies_then_the_original);
}

/// Docs: "`None` sends the request itself, and that attempt is the call's last (its result
/// is the answer ...)". A copier refusing at its first, a middle or its last ask: the call
/// ends at that attempt, with no pause after it.
async fn refusal_at_each_ask<R: Runtime>(rt: Clocked<R>) {
    // (refused at ask, attempts the schedule allows) -> attempts made
    for (refuse_at, attempts) in [(1, 5), (2, 5), (3, 5), (4, 5), (1, 2)] {
        let live = Arc::new(AtomicI64::new(0));
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .deadline(Duration::from_secs(10))
            .retry(constant(10 * MS, attempts))
            .build()
            .unwrap();
        let copier = Copier::refusing_at(refuse_at);
        let svc = Svc::new(&rt, down(MS));
        let start = rt.now();
        let answer = PipelineLayer::new(pipeline)
            .clone_requests(copier.clone())
            .layer(svc.clone())
            .oneshot(Tagged::new(9, &live))
            .await;
        let made = refuse_at;
        let mut expected: Vec<u32> = (1..made).collect();
        expected.push(0);
        let case = format!("refused at ask {refuse_at} of {attempts} attempts");
        assert_eq!(answer, Err(Error::Inner("down")), "{case}");
        assert_eq!(svc.generations(), expected, "{case}");
        assert_eq!(copier.asks(), refuse_at, "{case}");
        assert_eq!(
            rt.now() - start,
            made * MS + (made - 1) * 10 * MS,
            "{case}: no pause after the refused attempt"
        );
        assert_eq!(live.load(SeqCst), 0, "{case}");
    }
}

#[test]
fn a_copier_refusing_at_the_first_a_middle_or_the_last_ask_ends_the_call_there() {
    on_every_runtime!(refusal_at_each_ask);
}

/// The attempt the copier refused is the last, and its success is the answer; an answer that
/// came earlier leaves the kept original unsent (and dropped), no more asks.
async fn answers_before_and_at_the_refusal<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let retrying = || {
        Pipeline::builder()
            .runtime(rt.clone())
            .retry(constant(10 * MS, 5))
            .build()
            .unwrap()
    };
    // Refused at the third ask, and the third attempt answers.
    let copier = Copier::refusing_at(3);
    let svc = Svc::new(&rt, up_at(3, MS));
    let answer = PipelineLayer::new(retrying())
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(answer, Ok(3));
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 2, 0], 3));

    // The second attempt answers: two asks, two copies sent, the original never.
    let copier = Copier::always();
    let svc = Svc::new(&rt, up_at(2, MS));
    let answer = PipelineLayer::new(retrying())
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(2, &live))
        .await;
    assert_eq!(answer, Ok(2));
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 2], 2));
    assert_eq!(live.load(SeqCst), 0, "the unsent original was dropped");
}

#[test]
fn an_answer_ends_the_asks_and_a_refused_attempt_may_still_succeed() {
    on_every_runtime!(answers_before_and_at_the_refusal);
}

/// Docs: "the last possible attempt sends the request itself without asking" and (layer)
/// "none for a pipeline without retry". `max_attempts(1)`, no retry stage at all (with every
/// other stage), and an empty budget: the copier is never asked.
async fn never_asked_without_a_possible_retry<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let copier = Copier::new(|_| panic!("asked for a copy no retry could use"));

    let single = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(10 * MS, 1))
        .build()
        .unwrap();
    let svc = Svc::new(&rt, down(MS));
    let answer = PipelineLayer::new(single)
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(answer, Err(Error::Inner("down")));
    assert_eq!(svc.generations(), [0]);

    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(100)
        .build()
        .unwrap();
    let everything_but_retry = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(Duration::from_secs(1))
        .rate_limit(
            RateLimiter::builder(100, Duration::from_secs(1))
                .runtime(rt.clone())
                .build()
                .unwrap(),
        )
        .bulkhead(Bulkhead::builder(4).runtime(rt.clone()).build().unwrap())
        .breaker(breaker.clone())
        .attempt_timeout(50 * MS)
        .build()
        .unwrap();
    let svc = Svc::new(&rt, down(MS));
    let answer = PipelineLayer::new(everything_but_retry)
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(2, &live))
        .await;
    assert_eq!(answer, Err(Error::Inner("down")));
    assert_eq!(svc.generations(), [0]);
    assert_eq!(breaker.counts().failures, 1);

    let empty = RetryBudgetPolicy::builder()
        .ratio(0.0)
        .min_per_second(0)
        .window(Duration::from_secs(1))
        .build()
        .unwrap();
    let no_budget = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(10 * MS, 5))
        .retry_budget(RetryBudget::new(empty, rt.now()))
        .build()
        .unwrap();
    let svc = Svc::new(&rt, down(MS));
    let answer = PipelineLayer::new(no_budget)
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(3, &live))
        .await;
    assert_eq!(answer, Err(Error::Inner("down")));
    assert_eq!(svc.generations(), [0]);
    assert_eq!(copier.asks(), 0);
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn the_copier_is_never_asked_when_no_retry_could_follow() {
    on_every_runtime!(never_asked_without_a_possible_retry);
}

/// `ByClone` set explicitly is the default; and `NoClone` over a request that is `Clone` still
/// gives it one attempt.
async fn by_clone_is_the_default<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let retrying = || {
        Pipeline::builder()
            .runtime(rt.clone())
            .retry(constant(10 * MS, 3))
            .build()
            .unwrap()
    };
    for explicit in [false, true] {
        let svc = Svc::new(&rt, down(MS));
        let request = Tagged::new(1, &live);
        let clones = Arc::clone(&request.clones);
        let answer = if explicit {
            PipelineLayer::new(retrying())
                .clone_requests(ByClone)
                .layer(svc.clone())
                .oneshot(request)
                .await
        } else {
            PipelineLayer::new(retrying())
                .layer(svc.clone())
                .oneshot(request)
                .await
        };
        assert_eq!(answer, Err(Error::Inner("down")));
        assert_eq!((svc.calls(), clones.load(SeqCst)), (3, 2), "{explicit}");
    }
    let svc = Svc::new(&rt, down(MS));
    let request = Tagged::new(2, &live);
    let clones = Arc::clone(&request.clones);
    let answer = PipelineLayer::new(retrying())
        .clone_requests(NoClone)
        .layer(svc.clone())
        .oneshot(request)
        .await;
    assert_eq!(answer, Err(Error::Inner("down")));
    assert_eq!((svc.calls(), clones.load(SeqCst)), (1, 0));
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn by_clone_set_explicitly_is_the_default_and_no_clone_ignores_clone() {
    on_every_runtime!(by_clone_is_the_default);
}

/// Docs (`clone_requests`): the copier "is cloned into every call". Its clones do not grow
/// with the attempts a call makes, and every call gets at least one.
struct CountedCopier {
    clones: Arc<AtomicU32>,
}

impl Clone for CountedCopier {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, SeqCst);
        Self {
            clones: Arc::clone(&self.clones),
        }
    }
}

impl CloneRequest<u32> for CountedCopier {
    fn clone_request(&self, request: &u32) -> Option<u32> {
        Some(*request)
    }
}

async fn the_copier_is_cloned_per_call<R: Runtime>(rt: Clocked<R>) {
    let retrying = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(MS, 6))
        .build()
        .unwrap();
    let clones = Arc::new(AtomicU32::new(0));
    let layer = PipelineLayer::new(retrying).clone_requests(CountedCopier {
        clones: Arc::clone(&clones),
    });
    // One service, several calls through it.
    let mut answers_first = layer.layer(Svc::new(&rt, up_at(1, MS)));
    let mut fails = layer.layer(Svc::new(&rt, down(MS)));
    let per_call = |before: u32| clones.load(SeqCst) - before;

    let before = clones.load(SeqCst);
    let _ = answers_first.ready().await.unwrap().call(1).await;
    let one_attempt = per_call(before);
    let before = clones.load(SeqCst);
    let _ = fails.ready().await.unwrap().call(2).await;
    let six_attempts = per_call(before);
    let before = clones.load(SeqCst);
    let _ = fails.ready().await.unwrap().call(3).await;
    let again = per_call(before);
    assert!(one_attempt >= 1, "cloned into the call: {one_attempt}");
    assert_eq!(
        (one_attempt, again),
        (six_attempts, six_attempts),
        "into every call, not every attempt"
    );
}

#[test]
fn the_copier_is_cloned_into_each_call_not_each_attempt() {
    on_every_runtime!(the_copier_is_cloned_per_call);
}

// === schedules: extreme, capped, zero ========================================================

/// A schedule of `u32::MAX` attempts with zero delays: a copier refusing at its 1000th ask
/// ends the call at attempt 1000, in no virtual time; one that always copies asks exactly
/// as many times as attempts were made before the answer.
async fn a_huge_schedule_ends_where_the_copier_says<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let huge = || {
        Pipeline::builder()
            .runtime(rt.clone())
            .retry(
                Backoff::constant(Duration::ZERO)
                    .jitter(Jitter::None)
                    .max_attempts(u32::MAX)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    };
    let copier = Copier::refusing_at(1_000);
    let svc = Svc::new(&rt, down(Duration::ZERO));
    let start = rt.now();
    let answer = PipelineLayer::new(huge())
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(answer, Err(Error::Inner("down")));
    assert_eq!((svc.calls(), copier.asks()), (1_000, 1_000));
    assert_eq!(svc.generations().last(), Some(&0), "the original last");
    assert_eq!(rt.now(), start, "zero delays, instant attempts");

    let copier = Copier::always();
    let svc = Svc::new(&rt, up_at(777, Duration::ZERO));
    let answer = PipelineLayer::new(huge())
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(2, &live))
        .await;
    assert_eq!(answer, Ok(777));
    assert_eq!((svc.calls(), copier.asks()), (777, 777));
    assert!(svc.generations().iter().all(|&g| g > 0), "only copies sent");
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_huge_zero_delay_schedule_ends_where_the_copier_refuses() {
    on_every_runtime!(a_huge_schedule_ends_where_the_copier_says);
}

/// Backoff docs: `max_elapsed` "ends the schedule before the sum of delays would exceed
/// `budget`". 10 ms delays under a 25 ms cap allow three attempts of the ten: the third is the
/// last possible, so it sends the original without asking (two asks, `n - 1` copies).
async fn a_max_elapsed_cap_makes_the_last_attempt<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let capped = Backoff::constant(10 * MS)
        .jitter(Jitter::None)
        .max_attempts(10)
        .max_elapsed(25 * MS)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(capped)
        .build()
        .unwrap();
    let copier = Copier::always();
    let svc = Svc::new(&rt, down(MS));
    let start = rt.now();
    let answer = PipelineLayer::new(pipeline)
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(answer, Err(Error::Inner("down")));
    assert_eq!(rt.now() - start, 3 * MS + 20 * MS, "three attempts");
    assert_eq!(
        svc.generations(),
        [1, 2, 0],
        "the capped schedule's last sends the original"
    );
    assert_eq!(copier.asks(), 2);
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_schedule_capped_by_max_elapsed_sends_the_original_on_its_last_attempt() {
    on_every_runtime!(a_max_elapsed_cap_makes_the_last_attempt);
}

// === the retry budget ========================================================================

/// A budget of one retry a window (`min_per_second = 1`, a 1 s window, no ratio): the first
/// attempt is asked (the budget has a retry), the second is the last possible (the budget is
/// spent): two attempts, one ask. A second call in the same window is never asked; a call a
/// virtual day later gets its retry again.
async fn one_retry_in_the_budget<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.0)
        .min_per_second(1)
        .window(Duration::from_secs(1))
        .buckets(10)
        .build()
        .unwrap();
    let budget = RetryBudget::new(policy, rt.now());
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(10 * MS, 4))
        .retry_budget(budget.clone())
        .build()
        .unwrap();
    let layer = PipelineLayer::new(pipeline);
    // (generations sent, asks) of one failing call.
    let call = |id| {
        let copier = Copier::always();
        let svc = Svc::new(&rt, down(MS));
        let service = layer
            .clone()
            .clone_requests(copier.clone())
            .layer(svc.clone());
        let request = Tagged::new(id, &live);
        async move {
            let answer = service.oneshot(request).await;
            assert_eq!(answer, Err(Error::Inner("down")));
            (svc.generations(), copier.asks())
        }
    };
    assert_eq!(call(1).await, (vec![1, 0], 1), "one retry, then none");
    assert_eq!(budget.balance(rt.now()), 0);
    assert_eq!(call(2).await, (vec![0], 0), "spent: never asked");
    rt.sleep(DAY).await;
    assert_eq!(call(3).await, (vec![1, 0], 1), "a day later, a retry again");
    assert_eq!(call(4).await, (vec![0], 0));
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_budget_with_one_retry_gives_one_ask_and_refills_after_a_day() {
    on_every_runtime!(one_retry_in_the_budget);
}

/// Two calls at once over a budget with one retry: both are asked before their first attempt
/// (the budget has a retry for each, then), one gets the retry, and its second attempt is the
/// last possible. Three attempts, two asks, one of the two originals sent after a copy.
async fn two_calls_race_for_one_retry<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.0)
        .min_per_second(1)
        .window(Duration::from_secs(1))
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(10 * MS, 4))
        .retry_budget(RetryBudget::new(policy, rt.now()))
        .build()
        .unwrap();
    let copier = Copier::always();
    let svc = Svc::new(&rt, down(MS));
    let service = PipelineLayer::new(pipeline)
        .clone_requests(copier.clone())
        .layer(svc.clone());
    let a = rt.spawn(service.clone().oneshot(Tagged::new(1, &live)));
    let b = rt.spawn(service.oneshot(Tagged::new(2, &live)));
    assert_eq!(a.await.unwrap(), Err(Error::Inner("down")));
    assert_eq!(b.await.unwrap(), Err(Error::Inner("down")));
    assert_eq!((svc.calls(), copier.asks()), (3, 2));
    let mut generations = svc.generations();
    generations.sort_unstable();
    assert_eq!(generations, [0, 1, 2], "two copies, one original");
    assert_eq!(live.load(SeqCst), 0, "the loser's kept original dropped");
}

#[test]
fn concurrent_calls_racing_for_the_last_retry_ask_only_while_it_is_there() {
    on_every_runtime!(two_calls_race_for_one_retry);
}

/// A budget partly full: two retries in it (four calls deposited at a ratio of one half),
/// five attempts allowed. The first two attempts are asked for, the third is the last
/// possible (the budget is spent): copies 1, 2, then the original.
async fn a_partly_full_budget<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.5)
        .min_per_second(0)
        .window(Duration::from_secs(10))
        .build()
        .unwrap();
    let budget = RetryBudget::new(policy, rt.now());
    (0..4).for_each(|_| budget.deposit(rt.now()));
    assert_eq!(budget.balance(rt.now()), 2);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(10 * MS, 5))
        .retry_budget(budget.clone())
        .build()
        .unwrap();
    let copier = Copier::always();
    let svc = Svc::new(&rt, down(MS));
    let answer = PipelineLayer::new(pipeline)
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(answer, Err(Error::Inner("down")));
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 2, 0], 2));
    assert_eq!(budget.balance(rt.now()), 0);
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_partly_full_budget_makes_the_attempt_after_its_last_retry_send_the_original() {
    on_every_runtime!(a_partly_full_budget);
}

/// A closure deciding by the request, shared by 20 concurrent calls through one layer and a
/// bulkhead of 2 with a queue: even ids get all three attempts, odd ones one; every slot comes
/// back.
async fn per_request_decisions_under_concurrency<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let bulkhead = Bulkhead::builder(2)
        .runtime(rt.clone())
        .max_queue(32)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(Duration::from_secs(10))
        .bulkhead(bulkhead.clone())
        .retry(constant(10 * MS, 3))
        .build()
        .unwrap();
    let layer = PipelineLayer::new(pipeline).clone_requests(|request: &Tagged| {
        request.asks.fetch_add(1, SeqCst);
        request.id.is_multiple_of(2).then(|| request.copy(1))
    });
    let svc = Svc::new(&rt, down(3 * MS));
    let requests: Vec<Tagged> = (0..20).map(|id| Tagged::new(id, &live)).collect();
    let tallies: Vec<_> = requests
        .iter()
        .map(|r| (r.id, Arc::clone(&r.asks), Arc::clone(&r.attempts)))
        .collect();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|r| rt.spawn(layer.layer(svc.clone()).oneshot(r)))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Err(Error::Inner("down")));
    }
    for (id, asks, attempts) in tallies {
        let expected = if id.is_multiple_of(2) { (2, 3) } else { (1, 1) };
        assert_eq!(
            (asks.load(SeqCst), attempts.load(SeqCst)),
            expected,
            "id {id}"
        );
    }
    assert_eq!(svc.calls(), 10 * 3 + 10);
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
    assert_eq!((svc.running(), live.load(SeqCst)), (0, 0));
}

#[test]
fn a_closure_deciding_per_request_under_concurrency_through_a_bulkhead() {
    on_every_runtime!(per_request_decisions_under_concurrency);
}

// === the deadline ============================================================================

/// A 25 ms deadline over 1 ms attempts 10 ms apart: the third attempt ends at 23 ms and the
/// next could not start in time. Docs: a copy is asked for before each attempt "after which
/// the pipeline could still retry (its schedule has an attempt left and its budget a
/// retry)": the deadline is not in that rule, so the third attempt sends a copy, and the
/// kept original is dropped unsent.
async fn no_time_for_the_next_attempt<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(25 * MS)
        .retry(constant(10 * MS, 5))
        .build()
        .unwrap();
    let copier = Copier::always();
    let svc = Svc::new(&rt, down(MS));
    let start = rt.now();
    let answer = PipelineLayer::new(pipeline)
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(answer, Err(Error::Inner("down")), "the last failure");
    assert_eq!(
        rt.now() - start,
        23 * MS,
        "no wait for a retry that cannot start"
    );
    assert_eq!(svc.generations(), [1, 2, 3]);
    assert_eq!(copier.asks(), 3);
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_deadline_leaving_no_time_for_the_next_attempt_still_sent_copies() {
    on_every_runtime!(no_time_for_the_next_attempt);
}

/// A copier refusing at its second ask makes the second attempt (the original) the last;
/// the deadline cuts it mid-attempt: `DeadlineExceeded`, the original and the attempt
/// dropped at the deadline.
async fn the_deadline_cuts_the_original<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(50 * MS)
        .retry(constant(10 * MS, 5))
        .build()
        .unwrap();
    let copier = Copier::refusing_at(2);
    // The first attempt fails quickly, the second hangs for 100 ms.
    let svc = Svc::new(&rt, |n| {
        if n == 1 {
            (MS, Err("down"))
        } else {
            (100 * MS, Ok(n))
        }
    });
    let start = rt.now();
    let answer = PipelineLayer::new(pipeline)
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(answer, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(rt.now() - start, 50 * MS);
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 0], 2));
    assert_eq!((svc.running(), live.load(SeqCst)), (0, 0));
}

#[test]
fn a_deadline_cutting_the_refused_copys_attempt_answers_deadline_exceeded() {
    on_every_runtime!(the_deadline_cuts_the_original);
}

// === retried `Ok` values, server hints ========================================================

/// An `Ok(503)` the classifier retries. Docs: the refused attempt's "result is the answer, as
/// when the attempts run out"; and when the deadline ends the call after a retried value, the
/// answer is that value.
async fn retried_ok_values_and_a_copier_that_stops<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let pipeline = |deadline: Option<Duration>| {
        let builder = Pipeline::builder().runtime(rt.clone());
        let builder = match deadline {
            Some(d) => builder.deadline(d),
            None => builder,
        };
        builder
            .retry(constant(10 * MS, 5))
            .classify(classify_503)
            .build()
            .unwrap()
    };

    // Refused at the first ask: the 503 is the answer, after one attempt.
    let copier = Copier::refusing_at(1);
    let svc = Svc::new(&rt, |_| (MS, Ok(503)));
    let answer = PipelineLayer::new(pipeline(None))
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!((answer, svc.calls(), copier.asks()), (Ok(503), 1, 1));

    // NoClone: the same.
    let svc = Svc::new(&rt, |_| (MS, Ok(503)));
    let answer = PipelineLayer::new(pipeline(None))
        .clone_requests(NoClone)
        .layer(svc.clone())
        .oneshot(Tagged::new(2, &live))
        .await;
    assert_eq!((answer, svc.calls()), (Ok(503), 1));

    // A 503, then the refused attempt fails: its error is the answer, as when the attempts
    // run out (no deadline ended the call).
    let copier = Copier::refusing_at(2);
    let svc = Svc::new(&rt, |n| (MS, if n == 1 { Ok(503) } else { Err("down") }));
    let answer = PipelineLayer::new(pipeline(None))
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(3, &live))
        .await;
    assert_eq!(answer, Err(Error::Inner("down")));
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 0], 2));

    // A 503, then the refused attempt hangs past the deadline: the deadline ended the call
    // after a retried value, so that value is the answer.
    let copier = Copier::refusing_at(2);
    let svc = Svc::new(&rt, |n| {
        if n == 1 {
            (MS, Ok(503))
        } else {
            (DAY, Ok(200))
        }
    });
    let start = rt.now();
    let answer = PipelineLayer::new(pipeline(Some(100 * MS)))
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(4, &live))
        .await;
    assert_eq!(answer, Ok(503));
    assert_eq!(rt.now() - start, 100 * MS);
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 0], 2));
    assert_eq!((svc.running(), live.load(SeqCst)), (0, 0));
}

#[test]
fn a_retried_ok_value_and_a_copier_that_stops_answer_as_the_docs_say() {
    on_every_runtime!(retried_ok_values_and_a_copier_that_stops);
}

/// A 503 with a `Retry-After` read by `retry_after_with`: past the deadline, the retry is not
/// made (the call ends at once with the 503; the copy was asked for before the hint was
/// known); capped by `max_retry_after`, the retry comes after the cap and sends a copy.
async fn hints_and_copies<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    // 503 with a 10 s hint first, then 200.
    let answer = |n: u32| (MS, Ok(if n == 1 { 503 } else { 200 }));
    let hint = |r: Result<&u32, &E>| (r.ok() == Some(&503)).then_some(Duration::from_secs(10));

    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(Duration::from_secs(1))
        .retry(constant(10 * MS, 3))
        .classify(classify_503)
        .retry_after_with(hint)
        .build()
        .unwrap();
    let copier = Copier::always();
    let svc = Svc::new(&rt, answer);
    let start = rt.now();
    let got = PipelineLayer::new(pipeline)
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(got, Ok(503));
    assert_eq!(rt.now() - start, MS, "the call ends at once");
    assert_eq!((svc.generations(), copier.asks()), (vec![1], 1));

    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(10 * MS, 3))
        .max_retry_after(20 * MS)
        .classify(classify_503)
        .retry_after_with(hint)
        .build()
        .unwrap();
    let copier = Copier::always();
    let svc = Svc::new(&rt, answer);
    let start = rt.now();
    let got = PipelineLayer::new(pipeline)
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(2, &live))
        .await;
    assert_eq!(got, Ok(200));
    assert_eq!(rt.now() - start, MS + 20 * MS + MS, "the hint cut to 20 ms");
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 2], 2));
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn retry_after_hints_and_their_cap_with_a_copier() {
    on_every_runtime!(hints_and_copies);
}

// === the breaker, the attempt timeout ========================================================

/// A breaker opened for 25 ms. Docs: `NoClone` sends "each request at most once ... An
/// attempt the breaker refuses sends nothing": the refusal is retried as the pipeline retries
/// `CircuitOpen`, and the request is sent once, after the break.
async fn no_clone_over_an_open_breaker<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(25 * MS)
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(Duration::from_secs(1))
        .retry(constant(10 * MS, 5))
        .breaker(breaker.clone())
        .build()
        .unwrap();
    let svc = Svc::new(&rt, up_at(1, MS));
    let start = rt.now();
    let answer = PipelineLayer::new(pipeline)
        .clone_requests(NoClone)
        .layer(svc.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(answer, Ok(1));
    assert_eq!(svc.generations(), [0], "the request itself, once");
    assert!(rt.now() - start >= 25 * MS, "waited out the break");
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn no_clone_sends_the_request_once_after_the_refusals_it_waited_out() {
    on_every_runtime!(no_clone_over_an_open_breaker);
}

/// A breaker open for 25 ms, a copier that copies. Docs: "An attempt the breaker refuses
/// sends nothing and asks nothing; it still counts against the schedule". With 5 attempts
/// the refused first asks nothing and the retry after the break asks once and sends a copy;
/// with 2 the retry is the last possible and sends the original unasked. (Found by this
/// suite: the sentence was missing, and the docs read as if a refused attempt were asked.)
async fn a_refused_attempt_is_asked_for<R: Runtime>(rt: Clocked<R>) {
    for (attempts, sent, asks) in [(5, 1, 1), (2, 0, 0)] {
        let live = Arc::new(AtomicI64::new(0));
        let breaker = CircuitBreaker::builder()
            .runtime(rt.clone())
            .consecutive_failures(1)
            .break_duration(25 * MS)
            .build()
            .unwrap();
        breaker.try_acquire().unwrap().failure();
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .deadline(Duration::from_secs(1))
            .retry(constant(10 * MS, attempts))
            .breaker(breaker.clone())
            .build()
            .unwrap();
        let copier = Copier::always();
        let svc = Svc::new(&rt, up_at(1, MS));
        let start = rt.now();
        let answer = PipelineLayer::new(pipeline)
            .clone_requests(copier.clone())
            .layer(svc.clone())
            .oneshot(Tagged::new(1, &live))
            .await;
        assert_eq!(answer, Ok(1), "{attempts}");
        assert!(rt.now() - start >= 25 * MS, "waited out the break");
        assert_eq!(svc.generations(), [sent], "{attempts} attempts");
        assert_eq!(copier.asks(), asks, "{attempts} attempts");
        assert_eq!(live.load(SeqCst), 0);
    }
}

#[test]
fn an_attempt_the_open_breaker_refuses_asks_nothing_but_counts() {
    on_every_runtime!(a_refused_attempt_is_asked_for);
}

/// Attempt timeouts: each timed-out copy is dropped with its attempt; the last attempt's
/// timeout is the answer, whether the schedule or the copier made it the last.
async fn attempt_timeouts_drop_copies<R: Runtime>(rt: Clocked<R>) {
    for (copier, sent) in [
        (Copier::always(), vec![1, 2, 0]),
        (Copier::refusing_at(2), vec![1, 0]),
    ] {
        let live = Arc::new(AtomicI64::new(0));
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .retry(constant(10 * MS, 3))
            .attempt_timeout(20 * MS)
            .build()
            .unwrap();
        let svc = Svc::new(&rt, |n| (100 * MS, Ok(n)));
        let start = rt.now();
        let answer = PipelineLayer::new(pipeline)
            .clone_requests(copier.clone())
            .layer(svc.clone())
            .oneshot(Tagged::new(1, &live))
            .await;
        let made = u32::try_from(sent.len()).unwrap();
        assert_eq!(answer, Err(Error::TimedOut));
        assert_eq!(rt.now() - start, made * 20 * MS + (made - 1) * 10 * MS);
        assert_eq!(svc.generations(), sent);
        assert_eq!(copier.asks(), made.min(2));
        assert_eq!((svc.running(), live.load(SeqCst)), (0, 0));
    }
}

#[test]
fn attempt_timeouts_drop_each_copy_and_the_last_timeout_is_the_answer() {
    on_every_runtime!(attempt_timeouts_drop_copies);
}

// === admission stages ========================================================================

/// A call the bulkhead refuses makes no attempt, so no ask; its request is dropped. A call
/// the rate limiter refuses for the deadline, the same.
async fn refused_admission_asks_nothing<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let bulkhead = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let held = bulkhead.try_acquire_owned().unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead.clone())
        .retry(constant(10 * MS, 3))
        .build()
        .unwrap();
    let copier = Copier::always();
    let svc = Svc::new(&rt, down(MS));
    let answer = PipelineLayer::new(pipeline)
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(answer, Err(Error::Rejected(Rejected::BulkheadFull)));
    assert_eq!((svc.calls(), copier.asks(), live.load(SeqCst)), (0, 0, 0));
    drop(held);
    assert_eq!(bulkhead.in_flight(), 0);

    let limiter = RateLimiter::builder(1, Duration::from_secs(3_600))
        .runtime(rt.clone())
        .burst(1)
        .build()
        .unwrap();
    limiter.check().unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(Duration::from_secs(1))
        .rate_limit(limiter)
        .retry(constant(10 * MS, 3))
        .build()
        .unwrap();
    let answer = PipelineLayer::new(pipeline)
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(2, &live))
        .await;
    assert!(matches!(answer, Err(Error::Rejected(_))), "{answer:?}");
    assert_eq!((svc.calls(), copier.asks(), live.load(SeqCst)), (0, 0, 0));
}

#[test]
fn a_call_refused_at_admission_never_asks_for_a_copy() {
    on_every_runtime!(refused_admission_asks_nothing);
}

/// Docs: attempts come "after the pipeline's admission". A call waiting 100 ms for the rate
/// limiter is not asked for a copy while it waits; then asked as its schedule says.
async fn asks_come_after_the_limiters_wait<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let limiter = RateLimiter::builder(1, 100 * MS)
        .runtime(rt.clone())
        .burst(1)
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    limiter.check().unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(Duration::from_secs(1))
        .rate_limit(limiter)
        .retry(constant(10 * MS, 3))
        .build()
        .unwrap();
    let copier = Copier::always();
    let svc = Svc::new(&rt, down(MS));
    let start = rt.now();
    let call = rt.spawn(
        PipelineLayer::new(pipeline)
            .clone_requests(copier.clone())
            .layer(svc.clone())
            .oneshot(Tagged::new(1, &live)),
    );
    rt.sleep(50 * MS).await;
    assert_eq!((copier.asks(), svc.calls()), (0, 0), "still waiting");
    assert_eq!(call.await.unwrap(), Err(Error::Inner("down")));
    assert_eq!(rt.now() - start, 100 * MS + 3 * MS + 2 * 10 * MS);
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 2, 0], 2));
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn the_copier_is_asked_only_after_the_rate_limiters_wait() {
    on_every_runtime!(asks_come_after_the_limiters_wait);
}

/// A stack of every stage from a configuration (rate limit, bulkhead with a queue, retry,
/// breaker, attempt timeout, deadline), 24 concurrent calls each dropped at a seeded random
/// poll point (or run out), copiers refusing at seeded random asks, services answering at
/// random: afterwards every bulkhead slot and queue place is back, no request or attempt is
/// alive, and no call made more attempts than one plus its copies.
async fn admission_conserved_under_drops<R: Runtime>(rt: Clocked<R>, adaptive: bool) {
    let stage = if adaptive {
        "[instances.s.adaptive]\nalgorithm = \"aimd\"\ninitial_limit = 3\nmin_limit = 1\nmax_limit = 6\ntimeout = \"50ms\"\nbackoff_ratio = 0.5\n"
    } else {
        "[instances.s.bulkhead]\nmax_concurrent = 3\nmax_queue = 30\n"
    };
    let text = format!(
        "[instances.s]\ndeadline = \"300ms\"\nattempt_timeout = \"40ms\"\n{stage}[instances.s.rate_limit]\ncount = 1000\nperiod = \"1s\"\n[instances.s.retry]\nbackoff = \"constant\"\ninitial_delay = \"5ms\"\nmax_attempts = 4\njitter = \"none\"\n[instances.s.breaker]\nconsecutive_failures = 1000\n"
    );
    let registry = Registry::builder(config(&text))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let layer = PipelineLayer::new(registry.pipeline("s").unwrap());
    for seed in 0..4_u64 {
        let mut rng = Rng::new(0x5eed_0000 + seed);
        let live = Arc::new(AtomicI64::new(0));
        let script: Arc<Vec<(u64, bool)>> =
            Arc::new((0..512).map(|_| (rng.below(60), rng.one_in(4))).collect());
        let svc = Svc::new(&rt, move |n| {
            let (delay, ok) = script[usize::try_from(n).unwrap() % script.len()];
            (
                Duration::from_millis(delay),
                if ok { Ok(n) } else { Err("down") },
            )
        });
        let mut tasks = Vec::new();
        let mut requests = Vec::new();
        for id in 0..24 {
            let refuse_at = u32::try_from(rng.below(5)).unwrap() + 1;
            let copier = Copier::refusing_at(refuse_at);
            let polls = u32::try_from(rng.below(12)).unwrap() + 1;
            let request = Tagged::new(id, &live);
            requests.push((Arc::clone(&request.attempts), copier.clone()));
            let call = layer
                .clone()
                .clone_requests(copier)
                .layer(svc.clone())
                .oneshot(request);
            tasks.push(rt.spawn(DropAfter {
                inner: Some(Box::pin(call)),
                polls,
            }));
        }
        for task in tasks {
            let _ = task.await.unwrap();
        }
        // Let any wake-ups due settle.
        rt.sleep(Duration::from_secs(1)).await;
        assert_eq!(live.load(SeqCst), 0, "seed {seed}: every request dropped");
        assert_eq!(svc.running(), 0, "seed {seed}: every attempt dropped");
        for (attempts, copier) in &requests {
            let attempts = attempts.load(SeqCst);
            let asks = copier.asks();
            assert!(
                attempts <= asks + 1 && attempts <= 4 && asks <= 3,
                "seed {seed}: {attempts} attempts after {asks} asks"
            );
        }
        if adaptive {
            let limiter = registry.adaptive_limiter("s").unwrap();
            assert_eq!(
                (limiter.in_flight(), limiter.queued()),
                (0, 0),
                "seed {seed}"
            );
        } else {
            let bulkhead = registry.bulkhead("s").unwrap();
            assert_eq!(
                (bulkhead.in_flight(), bulkhead.queued()),
                (0, 0),
                "seed {seed}"
            );
        }
    }
}

async fn bulkhead_conserved<R: Runtime>(rt: Clocked<R>) {
    admission_conserved_under_drops(rt, false).await;
}

async fn adaptive_conserved<R: Runtime>(rt: Clocked<R>) {
    admission_conserved_under_drops(rt, true).await;
}

#[test]
fn bulkhead_slots_come_back_from_calls_dropped_at_random_poll_points() {
    on_every_runtime!(bulkhead_conserved);
}

#[test]
fn adaptive_limiter_slots_come_back_from_calls_dropped_at_random_poll_points() {
    on_every_runtime!(adaptive_conserved);
}

/// A copier holding a quota of 12 copies in an `Arc`, shared by 10 concurrent calls through
/// one bulkhead-free pipeline of 4 attempts: every copy granted is one more attempt, so 22
/// attempts in all, whichever calls got the copies.
async fn a_shared_quota_across_calls<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let quota = Arc::new(AtomicU32::new(12));
    let asks = Arc::new(AtomicU32::new(0));
    let (q, a) = (Arc::clone(&quota), Arc::clone(&asks));
    let copier = move |request: &Tagged| {
        a.fetch_add(1, SeqCst);
        q.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .ok()
            .map(|n| request.copy(100 + n))
    };
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(10 * MS, 4))
        .build()
        .unwrap();
    let svc = Svc::new(&rt, down(MS));
    let service: BoxCloneService<Tagged, u32, E> = BoxCloneService::new(
        PipelineLayer::new(pipeline)
            .clone_requests(copier)
            .layer(svc.clone()),
    );
    let tasks: Vec<_> = (0..10)
        .map(|id| rt.spawn(service.clone().oneshot(Tagged::new(id, &live))))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Err(Error::Inner("down")));
    }
    assert_eq!(quota.load(SeqCst), 0);
    assert_eq!(svc.calls(), 10 + 12, "one attempt per call and per copy");
    assert_eq!(asks.load(SeqCst), 22, "no call reached its fourth attempt");
    assert_eq!(
        svc.generations().iter().filter(|&&g| g == 0).count(),
        10,
        "every original sent once, at its call's last attempt"
    );
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_copier_sharing_a_quota_across_concurrent_calls_through_a_box_clone_service() {
    on_every_runtime!(a_shared_quota_across_calls);
}

/// Docs (cost): for `n` attempts, `n + 1` clones of the service, and of the request one per
/// attempt a retry could follow. With a copier that stops at its second ask and with
/// `NoClone`.
async fn service_clones_follow_the_attempts<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let retrying = || {
        Pipeline::builder()
            .runtime(rt.clone())
            .retry(constant(10 * MS, 5))
            .build()
            .unwrap()
    };
    let copier = Copier::refusing_at(2);
    let svc = Svc::new(&rt, down(MS));
    let mut service = PipelineLayer::new(retrying())
        .clone_requests(copier.clone())
        .layer(svc.clone());
    let before = svc.clones.load(SeqCst);
    let answer = tower::ServiceExt::<Tagged>::ready(&mut service)
        .await
        .unwrap()
        .call(Tagged::new(1, &live))
        .await;
    assert_eq!(answer, Err(Error::Inner("down")));
    assert_eq!(svc.calls(), 2);
    assert_eq!(svc.clones.load(SeqCst) - before, 3, "n + 1 for 2 attempts");

    let svc = Svc::new(&rt, down(MS));
    let mut service = PipelineLayer::new(retrying())
        .clone_requests(NoClone)
        .layer(svc.clone());
    let before = svc.clones.load(SeqCst);
    let request = Tagged::new(2, &live);
    let clones = Arc::clone(&request.clones);
    let ready = tower::ServiceExt::<Tagged>::ready(&mut service).await;
    let _ = ready.unwrap().call(request).await;
    assert_eq!(svc.calls(), 1);
    assert_eq!(svc.clones.load(SeqCst) - before, 2, "n + 1 for 1 attempt");
    assert_eq!(clones.load(SeqCst), 0);
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn service_clones_are_one_more_than_the_attempts_a_copier_allowed() {
    on_every_runtime!(service_clones_follow_the_attempts);
}

// === configured pipelines and reloads ========================================================

const NO_RETRY: &str = "[instances.a]\n";

fn with_retry(attempts: u32) -> String {
    format!(
        "[instances.a]\n[instances.a.retry]\nbackoff = \"constant\"\ninitial_delay = \"10ms\"\nmax_attempts = {attempts}\njitter = \"none\"\n"
    )
}

/// Reloads between calls add and remove the retry stage: a copier is asked accordingly.
async fn reloads_between_calls<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let registry = Registry::builder(config(NO_RETRY))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let copier = Copier::always();
    let layer = PipelineLayer::new(registry.pipeline("a").unwrap()).clone_requests(copier.clone());
    let svc = Svc::new(&rt, down(MS));
    let service = layer.layer(svc.clone());
    let call = |id| {
        let (asks, calls) = (copier.asks(), svc.calls());
        let (copier, svc) = (copier.clone(), svc.clone());
        let call = service.clone().oneshot(Tagged::new(id, &live));
        async move {
            assert_eq!(call.await, Err(Error::Inner("down")));
            (svc.calls() - calls, copier.asks() - asks)
        }
    };
    assert_eq!(call(1).await, (1, 0));
    registry.reload(config(&with_retry(3))).unwrap();
    assert_eq!(call(2).await, (3, 2));
    registry.reload(config(&with_retry(1))).unwrap();
    assert_eq!(call(3).await, (1, 0), "max_attempts 1: never asked");
    registry.reload(config(&with_retry(6))).unwrap();
    assert_eq!(call(4).await, (6, 5));
    registry.reload(config(NO_RETRY)).unwrap();
    assert_eq!(call(5).await, (1, 0));
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn reloads_between_calls_add_and_remove_the_asks() {
    on_every_runtime!(reloads_between_calls);
}

/// Docs (`LivePipeline`): "a call started before [a reload] keeps the deadline, timeouts and
/// retry schedule it started with". A call started with three attempts keeps them (and its
/// two asks) across a reload removing the retry stage mid-call; one started without retry
/// gets no ask after a reload adds it mid-call.
async fn reloads_during_a_call<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let registry = Registry::builder(config(&with_retry(3)))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let copier = Copier::always();
    let layer = PipelineLayer::new(registry.pipeline("a").unwrap()).clone_requests(copier.clone());
    let svc = Svc::new(&rt, down(5 * MS));
    let call = rt.spawn(layer.layer(svc.clone()).oneshot(Tagged::new(1, &live)));
    rt.sleep(2 * MS).await;
    registry.reload(config(NO_RETRY)).unwrap();
    assert_eq!(call.await.unwrap(), Err(Error::Inner("down")));
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 2, 0], 2));

    // Started without retry, retry added during its only attempt.
    let copier = Copier::always();
    let layer = PipelineLayer::new(registry.pipeline("a").unwrap()).clone_requests(copier.clone());
    let svc = Svc::new(&rt, down(5 * MS));
    let call = rt.spawn(layer.layer(svc.clone()).oneshot(Tagged::new(2, &live)));
    rt.sleep(2 * MS).await;
    registry.reload(config(&with_retry(4))).unwrap();
    assert_eq!(call.await.unwrap(), Err(Error::Inner("down")));
    assert_eq!((svc.generations(), copier.asks()), (vec![0], 0));
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_reload_during_a_call_leaves_its_asks_to_the_schedule_it_started_with() {
    on_every_runtime!(reloads_during_a_call);
}

/// A thread reloads the configuration in a loop (no retry, 3 attempts, 5 attempts) while
/// calls run, several at a time: each call keeps one schedule, so its asks and attempts are
/// one of (0, 1), (2, 3), (4, 5), never a mix.
async fn reloads_from_another_thread<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let registry = Arc::new(
        Registry::builder(config(NO_RETRY))
            .runtime(rt.clone())
            .build()
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let reloads = Arc::new(AtomicU32::new(0));
    let reloader = {
        let (registry, stop, reloads) = (
            Arc::clone(&registry),
            Arc::clone(&stop),
            Arc::clone(&reloads),
        );
        let texts = [NO_RETRY.to_owned(), with_retry(3), with_retry(5)];
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(SeqCst) {
                registry.reload(config(&texts[i % 3])).unwrap();
                reloads.fetch_add(1, SeqCst);
                i += 1;
                std::thread::yield_now();
            }
        })
    };
    let copier = Copier::always();
    let layer = PipelineLayer::new(registry.pipeline("a").unwrap()).clone_requests(copier);
    let svc = Svc::new(&rt, down(MS));
    let mut seen = std::collections::BTreeSet::new();
    let mut round = 0;
    while round < 30 || reloads.load(SeqCst) < 30 {
        let requests: Vec<Tagged> = (0..4).map(|i| Tagged::new(round * 4 + i, &live)).collect();
        let tallies: Vec<_> = requests
            .iter()
            .map(|r| (Arc::clone(&r.asks), Arc::clone(&r.attempts)))
            .collect();
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|r| rt.spawn(layer.layer(svc.clone()).oneshot(r)))
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Err(Error::Inner("down")));
        }
        for (asks, attempts) in tallies {
            let pair = (asks.load(SeqCst), attempts.load(SeqCst));
            assert!(
                matches!(pair, (0, 1) | (2, 3) | (4, 5)),
                "round {round}: (asks, attempts) {pair:?}"
            );
            seen.insert(pair);
        }
        round += 1;
        assert!(round < 100_000, "the reloader made no progress");
    }
    stop.store(true, SeqCst);
    reloader.join().unwrap();
    assert!(!seen.is_empty());
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn reloads_from_another_thread_never_mix_two_schedules_in_one_call() {
    on_every_runtime!(reloads_from_another_thread);
}

/// A configured pipeline with a budget (one retry a window), calls a virtual
/// day apart: each call after the idle gap gets exactly one ask again.
async fn configured_budget_after_idle_days<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let text = format!(
        "{}[instances.a.budget]\nratio = 0\nmin_per_second = 1\nwindow = \"1s\"\n",
        with_retry(5)
    );
    let registry = Registry::builder(config(&text))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let copier = Copier::always();
    let layer = PipelineLayer::new(registry.pipeline("a").unwrap()).clone_requests(copier.clone());
    let svc = Svc::new(&rt, down(MS));
    for day in 0..5_u32 {
        rt.sleep(DAY * (day + 1)).await;
        let asks = copier.asks();
        let calls = svc.calls();
        let answer = layer
            .layer(svc.clone())
            .oneshot(Tagged::new(day, &live))
            .await;
        assert_eq!(answer, Err(Error::Inner("down")));
        assert_eq!(
            (svc.calls() - calls, copier.asks() - asks),
            (2, 1),
            "day {day}"
        );
        // At once after: the budget is spent.
        let asks = copier.asks();
        let answer = layer
            .layer(svc.clone())
            .oneshot(Tagged::new(day, &live))
            .await;
        assert_eq!(answer, Err(Error::Inner("down")));
        assert_eq!(copier.asks() - asks, 0, "day {day}: spent");
    }
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_configured_budget_gives_one_ask_again_after_idle_days() {
    on_every_runtime!(configured_budget_after_idle_days);
}

// === nesting and other layers ================================================================

/// A pipeline layer inside another: the outer copier (2 attempts) is asked once; the inner
/// `ByClone` pipeline (3 attempts) clones the copy it was given twice, then sends it; then
/// the outer original goes through the inner pipeline the same way.
async fn a_pipeline_inside_a_pipeline<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let pipeline = |attempts| {
        Pipeline::builder()
            .runtime(rt.clone())
            .retry(constant(10 * MS, attempts))
            .build()
            .unwrap()
    };
    let copier = Copier::always();
    let svc = Svc::new(&rt, down(MS));
    let request = Tagged::new(1, &live);
    let clones = Arc::clone(&request.clones);
    let stack = tower::ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline(2)).clone_requests(copier.clone()))
        .layer(PipelineLayer::new(pipeline(3)))
        .service(svc.clone());
    assert_eq!(stack.oneshot(request).await, Err(Error::Inner("down")));
    assert_eq!(svc.generations(), [1, 1, 1, 0, 0, 0]);
    assert_eq!((copier.asks(), clones.load(SeqCst)), (1, 4));

    // NoClone outside a retrying inner pipeline: one outer attempt, three inner.
    let svc = Svc::new(&rt, down(MS));
    let stack = tower::ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline(3)).clone_requests(NoClone))
        .layer(PipelineLayer::new(pipeline(3)))
        .service(svc.clone());
    assert_eq!(
        stack.oneshot(Tagged::new(2, &live)).await,
        Err(Error::Inner("down"))
    );
    assert_eq!(svc.calls(), 3);

    // A `ByClone` pipeline outside a copier that never copies: three outer attempts, each
    // one inner attempt after one refused ask.
    let inner = Copier::new(|_| false);
    let svc = Svc::new(&rt, down(MS));
    let stack = tower::ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline(3)))
        .layer(PipelineLayer::new(pipeline(4)).clone_requests(inner.clone()))
        .service(svc.clone());
    assert_eq!(
        stack.oneshot(Tagged::new(3, &live)).await,
        Err(Error::Inner("down"))
    );
    assert_eq!((svc.calls(), inner.asks()), (3, 3));
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_pipeline_layer_nested_in_another_asks_each_its_own_copier() {
    on_every_runtime!(a_pipeline_inside_a_pipeline);
}

/// A tower `RetryLayer` above a `NoClone` pipeline retries the whole pipeline (3 × 1
/// attempts); a `TimeoutLayer` below it makes each attempt a timeout error the pipeline
/// retries with copies; a `TimeoutLayer` above cuts the whole call, dropping every copy.
async fn with_retry_and_timeout_layers<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let pipeline = |attempts| {
        Pipeline::builder()
            .runtime(rt.clone())
            .retry(constant(10 * MS, attempts))
            .build()
            .unwrap()
    };
    let svc = Svc::new(&rt, down(MS));
    let stack = tower::ServiceBuilder::new()
        .layer(RetryLayer::new(constant(MS, 3)).runtime(rt.clone()))
        .layer(PipelineLayer::new(pipeline(3)).clone_requests(NoClone))
        .service(svc.clone());
    assert_eq!(
        stack.oneshot(Tagged::new(1, &live)).await,
        Err(Error::Inner("down"))
    );
    assert_eq!(svc.calls(), 3, "the retry layer's three, one attempt each");

    let copier = Copier::always();
    let svc = Svc::new(&rt, |n| (100 * MS, Ok(n)));
    let stack = tower::ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline(3)).clone_requests(copier.clone()))
        .layer(TimeoutLayer::new(20 * MS).runtime(rt.clone()))
        .service(svc.clone());
    let start = rt.now();
    assert_eq!(
        stack.oneshot(Tagged::new(2, &live)).await,
        Err(Error::TimedOut)
    );
    assert_eq!(rt.now() - start, 3 * 20 * MS + 2 * 10 * MS);
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 2, 0], 2));
    assert_eq!(svc.running(), 0);

    let copier = Copier::always();
    let svc = Svc::new(&rt, down(10 * MS));
    let stack = tower::ServiceBuilder::new()
        .layer(TimeoutLayer::new(35 * MS).runtime(rt.clone()))
        .layer(PipelineLayer::new(pipeline(10)).clone_requests(copier.clone()))
        .service(svc.clone());
    let start = rt.now();
    assert_eq!(
        stack.oneshot(Tagged::new(3, &live)).await,
        Err(Error::TimedOut)
    );
    assert_eq!(rt.now() - start, 35 * MS);
    // Attempts at 0, 20 (cut at 35): two asked for, two copies sent.
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 2], 2));
    assert_eq!((svc.running(), live.load(SeqCst)), (0, 0));
}

#[test]
fn retry_and_timeout_layers_around_a_pipeline_layer_with_a_copier() {
    on_every_runtime!(with_retry_and_timeout_layers);
}

/// An `AdmitLayer` (Reject) below over a full bulkhead: each attempt is refused by the layer
/// below (retried as the pipeline's own breaker's refusals are), the service never called;
/// the copier is asked before every attempt but the last; copies are dropped by the refusing
/// layer.
async fn an_admit_layer_below<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let below = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let held = below.try_acquire_owned().unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(10 * MS, 4))
        .build()
        .unwrap();
    let copier = Copier::refusing_at(3);
    let svc = Svc::new(&rt, up_at(1, MS));
    let stack = tower::ServiceBuilder::new()
        .layer(PipelineLayer::new(pipeline).clone_requests(copier.clone()))
        .layer(AdmitLayer::new(below.clone(), AdmitMode::Reject).runtime(rt.clone()))
        .service(svc.clone());
    let answer = stack.oneshot(Tagged::new(1, &live)).await;
    assert_eq!(answer, Err(Error::Rejected(Rejected::BulkheadFull)));
    assert_eq!(svc.calls(), 0);
    assert_eq!(copier.asks(), 3, "refused at the third ask: three attempts");
    assert_eq!(below.rejected(), 3);
    assert_eq!(live.load(SeqCst), 0);
    drop(held);
    assert_eq!(below.in_flight(), 0);
}

#[test]
fn an_admit_layer_below_refusing_each_attempt_consumes_the_copies() {
    on_every_runtime!(an_admit_layer_below);
}

// === axum ====================================================================================

/// An axum `Router` answering 503 (an `Ok` the classifier retries): a closure copies bodiless
/// GETs (rebuilt) and lets a streaming POST go once; the 503 is the answer either way.
#[tokio::test(start_paused = true)]
async fn an_axum_router_gets_copied_gets_and_a_single_post() {
    use axum::body::Body;
    use axum::http::{Method, Request, Response, StatusCode};

    let served = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&served);
    let handler = move || {
        seen.fetch_add(1, SeqCst);
        async { StatusCode::SERVICE_UNAVAILABLE }
    };
    let router =
        axum::Router::new().route("/orders", axum::routing::get(handler.clone()).post(handler));
    let router = tower::ServiceExt::<Request<Body>>::map_err(
        router,
        Error::<std::convert::Infallible>::Inner,
    );
    let pipeline = Pipeline::builder()
        .deadline(Duration::from_secs(1))
        .retry(constant(10 * MS, 3))
        .classify(
            |r: Result<&Response<Body>, &Error<std::convert::Infallible>>| match r {
                Ok(response) if response.status().is_server_error() => Verdict::RetryableFailure,
                Ok(_) => Verdict::Success,
                Err(_) => Verdict::RetryableFailure,
            },
        )
        .build()
        .unwrap();
    let asks = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&asks);
    let copy_gets = move |request: &Request<Body>| {
        counted.fetch_add(1, SeqCst);
        (request.method() == Method::GET).then(|| {
            Request::builder()
                .method(Method::GET)
                .uri(request.uri().clone())
                .body(Body::empty())
                .unwrap()
        })
    };
    let service = PipelineLayer::new(pipeline)
        .clone_requests(copy_gets)
        .layer(router);

    let get = Request::get("/orders").body(Body::empty()).unwrap();
    let response = service.clone().oneshot(get).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!((served.swap(0, SeqCst), asks.swap(0, SeqCst)), (3, 2));

    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>("one")]);
    let post = Request::post("/orders")
        .body(Body::from_stream(chunks))
        .unwrap();
    let response = service.oneshot(post).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!((served.load(SeqCst), asks.load(SeqCst)), (1, 1));
}
