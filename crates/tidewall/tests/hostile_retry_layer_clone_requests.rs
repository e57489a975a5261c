#![cfg(all(feature = "tower", feature = "toml"))]
//! Hostile black-box tests of how a `RetryLayer` gets each attempt's request
//! (`RetryLayer::clone_requests`, `CloneRequest`, `ByClone`, `NoClone`), written from the
//! rustdoc only: copiers that stop at the first, a middle or the last ask, that count their
//! asks or panic when asked; copiers shared by service clones and concurrent calls; deadlines,
//! `min_attempt_time`, hints, retryable `Ok` values, `max_elapsed` schedules, huge zero-delay
//! schedules and budgets across idle days; stacks with `TimeoutLayer`, `BreakerLayer`,
//! `AdmitLayer`, `HedgeLayer`, `PipelineLayer` and an axum `Router`; response futures dropped
//! at seeded poll points and virtual times; services whose readiness waits or fails. Every
//! scenario runs on every runtime, in virtual time.

mod clone_support;
mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use clone_support::Tagged;
use common::rng::Rng;
use futures_util::FutureExt as _;
use tidewall::breaker::CircuitBreaker;
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::Verdict;
use tidewall::hedge::Hedge;
use tidewall::pipeline::Pipeline;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::testing::Clocked;
use tidewall::tower::{AdmitLayer, AdmitMode, HedgeLayer, PipelineLayer, RetryLayer};
use tidewall::tower::{BreakerLayer, ByClone, CloneRequest, NoClone, TimeoutLayer};
use tidewall::{Backoff, Error, Jitter, Rejected, RetryAfter};
use tower::ServiceExt as _;
use tower::util::BoxCloneService;
use tower_layer::Layer;
use tower_service::Service;

const MS: Duration = Duration::from_millis(1);
const DAY: Duration = Duration::from_secs(86_400);

/// The service's own error: a plain failure, or one carrying a server's wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Down,
    Busy(Duration),
}

impl RetryAfter for Fault {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Down => None,
            Self::Busy(wait) => Some(*wait),
        }
    }
}

type E = Error<Fault>;

const DOWN: E = Error::Inner(Fault::Down);

fn constant(delay: Duration, attempts: u32) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

// --- requests that know where they came from ------------------------------------------------

/// A copier whose every ask is counted (shared by its clones, so across calls): `plan(n)`
/// says whether to copy at the `n`th ask; `seen` has the generation of each request asked
/// about; `clones` counts the copier's own clones.
struct Copier {
    asks: Arc<AtomicU32>,
    seen: Arc<Mutex<Vec<u32>>>,
    plan: Arc<dyn Fn(u32) -> bool + Send + Sync>,
    clones: Arc<AtomicU32>,
}

impl Clone for Copier {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, SeqCst);
        Self {
            asks: Arc::clone(&self.asks),
            seen: Arc::clone(&self.seen),
            plan: Arc::clone(&self.plan),
            clones: Arc::clone(&self.clones),
        }
    }
}

impl Copier {
    fn new(plan: impl Fn(u32) -> bool + Send + Sync + 'static) -> Self {
        Self {
            asks: Arc::new(AtomicU32::new(0)),
            seen: Arc::new(Mutex::new(Vec::new())),
            plan: Arc::new(plan),
            clones: Arc::new(AtomicU32::new(0)),
        }
    }

    fn always() -> Self {
        Self::new(|_| true)
    }

    /// Copies at the first `n - 1` asks and refuses the `n`th (and every later one).
    fn refusing_at(n: u32) -> Self {
        Self::new(move |ask| ask < n)
    }

    fn asks(&self) -> u32 {
        self.asks.load(SeqCst)
    }

    fn seen(&self) -> Vec<u32> {
        self.seen.lock().unwrap().clone()
    }

    fn clones(&self) -> u32 {
        self.clones.load(SeqCst)
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

/// A copier that must never be asked: no retry could follow any attempt it would be asked for.
#[derive(Clone, Copy)]
struct NeverAsked;

impl<Req> CloneRequest<Req> for NeverAsked {
    fn clone_request(&self, _: &Req) -> Option<Req> {
        panic!("asked for a copy before an attempt no retry could follow")
    }
}

// --- a scripted service ---------------------------------------------------------------------

type Answer = Arc<dyn Fn(u32) -> (Duration, Result<u32, Fault>) + Send + Sync>;

/// Answers its `n`th request (from 1) as `answer(n)` says, after the time it says; records
/// each request's generation, counts its own clones and its attempts still running.
struct Svc<R> {
    rt: R,
    answer: Answer,
    log: Arc<Mutex<Vec<u32>>>,
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

impl<R: Clone> Svc<R> {
    fn new(
        rt: &R,
        answer: impl Fn(u32) -> (Duration, Result<u32, Fault>) + Send + Sync + 'static,
    ) -> Self {
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
        self.log.lock().unwrap().clone()
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

impl<R: Clock> Service<Tagged> for Svc<R> {
    type Response = u32;
    type Error = E;
    type Future = Pin<Box<dyn Future<Output = Result<u32, E>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Tagged) -> Self::Future {
        let n = self.calls.fetch_add(1, SeqCst) + 1;
        self.log.lock().unwrap().push(request.generation);
        request.attempts.fetch_add(1, SeqCst);
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
fn down(d: Duration) -> impl Fn(u32) -> (Duration, Result<u32, Fault>) {
    move |_| (d, Err(Fault::Down))
}

/// Fails after `d` until its `k`th request, which (and every later one) answers `Ok(n)`.
fn up_at(k: u32, d: Duration) -> impl Fn(u32) -> (Duration, Result<u32, Fault>) {
    move |n| (d, if n >= k { Ok(n) } else { Err(Fault::Down) })
}

/// An `Ok` of 500 or more is a 503-like response: a retryable failure, as every error.
fn classify_5xx(result: Result<&u32, &E>) -> Verdict {
    match result {
        Ok(v) if *v >= 500 => Verdict::RetryableFailure,
        Ok(_) => Verdict::Success,
        Err(_) => Verdict::RetryableFailure,
    }
}

// --- a service whose readiness is scripted --------------------------------------------------

type ReadyPlan = Arc<dyn Fn(u32) -> (Duration, Result<(), Fault>) + Send + Sync>;

/// A readiness wait under way: its timer, and how it ends.
type ReadyWait<R> = (Pin<Box<<R as Clock>::Sleep>>, Result<(), Fault>);

/// `Svc` behind a readiness script: the `r`th readiness wait (over every clone, from 1) lasts
/// and ends as `plan(r)` says. Honours tower's contract strictly: a clone starts not ready,
/// and `call` without a ready `poll_ready` panics.
struct Gated<R: Clock> {
    inner: Svc<R>,
    plan: ReadyPlan,
    rounds: Arc<AtomicU32>,
    /// When each round began (from the scenario's start).
    log: Arc<Mutex<Vec<Duration>>>,
    origin: std::time::Instant,
    wait: Option<ReadyWait<R>>,
    ready: bool,
}

impl<R: Clock> Clone for Gated<R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            plan: Arc::clone(&self.plan),
            rounds: Arc::clone(&self.rounds),
            log: Arc::clone(&self.log),
            origin: self.origin,
            wait: None,
            ready: false,
        }
    }
}

impl<R: Clock> Gated<R> {
    fn new(
        inner: Svc<R>,
        plan: impl Fn(u32) -> (Duration, Result<(), Fault>) + Send + Sync + 'static,
    ) -> Self {
        let origin = inner.rt.now();
        Self {
            inner,
            plan: Arc::new(plan),
            rounds: Arc::new(AtomicU32::new(0)),
            log: Arc::new(Mutex::new(Vec::new())),
            origin,
            wait: None,
            ready: false,
        }
    }

    fn rounds(&self) -> u32 {
        self.rounds.load(SeqCst)
    }

    fn round_starts(&self) -> Vec<Duration> {
        self.log.lock().unwrap().clone()
    }
}

impl<R: Clock> Service<Tagged> for Gated<R> {
    type Response = u32;
    type Error = E;
    type Future = Pin<Box<dyn Future<Output = Result<u32, E>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        if self.ready {
            return Poll::Ready(Ok(()));
        }
        if self.wait.is_none() {
            let r = self.rounds.fetch_add(1, SeqCst) + 1;
            let now = self.inner.rt.now();
            self.log.lock().unwrap().push(now - self.origin);
            let (delay, outcome) = (self.plan)(r);
            self.wait = Some((Box::pin(self.inner.rt.sleep(delay)), outcome));
        }
        let (sleep, outcome) = self.wait.as_mut().unwrap();
        match sleep.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                let outcome = *outcome;
                self.wait = None;
                match outcome {
                    Ok(()) => {
                        self.ready = true;
                        Poll::Ready(Ok(()))
                    }
                    Err(fault) => Poll::Ready(Err(Error::Inner(fault))),
                }
            }
        }
    }

    fn call(&mut self, request: Tagged) -> Self::Future {
        assert!(self.ready, "called without a ready poll_ready");
        self.ready = false;
        self.inner.call(request)
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
            Poll::Pending if self.polls == 0 => {
                self.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Runs `future` until it ends or `after` of virtual time passes, then drops it.
async fn drop_after_time<R: Clock, F: Future>(
    rt: &R,
    after: Duration,
    future: F,
) -> Option<F::Output> {
    let future = std::pin::pin!(future);
    let timer = std::pin::pin!(rt.sleep(after));
    match futures_util::future::select(future, timer).await {
        futures_util::future::Either::Left((v, _)) => Some(v),
        futures_util::future::Either::Right(((), _)) => None,
    }
}

// === what a copier is asked, and what is sent ================================================

/// Docs (`CloneRequest`): "`Some(copy)` is sent and the request kept for a later attempt ...
/// The last possible attempt sends the request itself without asking." Four failing attempts
/// through a `RetryLayer`: copies 1, 2, 3 go out, then the original; the copier is only ever
/// shown the original; nothing is leaked, and the service got no clone of a request.
async fn copies_then_the_original<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let copier = Copier::always();
    let svc = Svc::new(&rt, down(MS));
    let start = rt.now();
    let request = Tagged::new(1, &live);
    let clones = Arc::clone(&request.clones);
    let answer = RetryLayer::new(constant(10 * MS, 4))
        .runtime(rt.clone())
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(request)
        .await;
    assert_eq!(answer, Err(DOWN));
    assert_eq!(svc.generations(), [1, 2, 3, 0]);
    assert_eq!(
        copier.asks(),
        3,
        "the last possible attempt is not asked for"
    );
    assert_eq!(copier.seen(), [0, 0, 0], "asked about the original only");
    assert_eq!(clones.load(SeqCst), 0, "`Clone` never used with a copier");
    assert_eq!(rt.now() - start, 4 * MS + 3 * 10 * MS);
    assert_eq!((live.load(SeqCst), svc.running()), (0, 0));
}

#[test]
fn copies_go_out_first_and_the_last_attempt_sends_the_original() {
    on_every_runtime!(copies_then_the_original);
}

/// Docs: "`None` sends the request itself, and that attempt is the call's last (its result is
/// the answer, as when the attempts run out)". A copier refusing at the first, a middle or the
/// last ask of a 4-attempt schedule ends the call at that attempt: the original goes out
/// there, no pause follows it, and the answer is its error.
async fn refusal_at_each_ask<R: Runtime>(rt: Clocked<R>) {
    for refuse_at in 1..=4_u32 {
        let live = Arc::new(AtomicI64::new(0));
        let copier = Copier::refusing_at(refuse_at);
        let svc = Svc::new(&rt, down(MS));
        let start = rt.now();
        let answer = RetryLayer::new(constant(10 * MS, 4))
            .runtime(rt.clone())
            .clone_requests(copier.clone())
            .layer(svc.clone())
            .oneshot(Tagged::new(refuse_at, &live))
            .await;
        let attempts = refuse_at.min(4);
        let mut sent: Vec<u32> = (1..attempts).collect();
        sent.push(0);
        assert_eq!(answer, Err(DOWN), "refused at ask {refuse_at}");
        assert_eq!(svc.generations(), sent, "refused at ask {refuse_at}");
        assert_eq!(
            copier.asks(),
            refuse_at.min(3),
            "refused at ask {refuse_at}"
        );
        assert_eq!(
            rt.now() - start,
            attempts * MS + (attempts - 1) * 10 * MS,
            "no pause after the original, refused at ask {refuse_at}"
        );
        assert_eq!(live.load(SeqCst), 0);
    }
}

#[test]
fn a_copier_refusing_at_the_first_a_middle_or_the_last_ask_ends_the_call_there() {
    on_every_runtime!(refusal_at_each_ask);
}

/// An answer ends the asks, and an attempt sending the original (copier refused) may still
/// succeed: its `Ok` is the answer. The kept original is dropped when a copy's attempt
/// answers.
async fn answers_end_the_asks<R: Runtime>(rt: Clocked<R>) {
    // (service up at, copier refusing at, generations sent, asks, answer)
    for (up, refuse, sent, asks, answer) in [
        (1, 9, vec![1], 1, Ok(1)),
        (2, 9, vec![1, 2], 2, Ok(2)),
        (2, 2, vec![1, 0], 2, Ok(2)),
        (3, 2, vec![1, 0], 2, Err(DOWN)),
        (1, 1, vec![0], 1, Ok(1)),
    ] {
        let live = Arc::new(AtomicI64::new(0));
        let copier = Copier::refusing_at(refuse);
        let svc = Svc::new(&rt, up_at(up, MS));
        let got = RetryLayer::new(constant(10 * MS, 5))
            .runtime(rt.clone())
            .clone_requests(copier.clone())
            .layer(svc.clone())
            .oneshot(Tagged::new(1, &live))
            .await;
        let case = format!("up at {up}, refusing at {refuse}");
        assert_eq!(got, answer, "{case}");
        assert_eq!(svc.generations(), sent, "{case}");
        assert_eq!(copier.asks(), asks, "{case}");
        assert_eq!(live.load(SeqCst), 0, "{case}");
    }
}

#[test]
fn an_answer_ends_the_asks_and_the_original_sent_after_a_refusal_may_succeed() {
    on_every_runtime!(answers_end_the_asks);
}

/// Docs: "With `max_attempts(1)` or a spent budget, nothing is ever cloned." A copier that
/// panics when asked: one attempt allowed, or a budget without a retry in it, never asks;
/// the original is sent once, failing or not, with the layer's other settings in place.
async fn never_asked_without_a_possible_retry<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    for up in [false, true] {
        let svc = Svc::new(&rt, move |n| {
            (MS, if up { Ok(n) } else { Err(Fault::Down) })
        });
        let got = RetryLayer::new(constant(10 * MS, 1))
            .runtime(rt.clone())
            .deadline(Duration::from_secs(1))
            .honor_retry_after()
            .clone_requests(NeverAsked)
            .layer(svc.clone())
            .oneshot(Tagged::new(1, &live))
            .await;
        assert_eq!(svc.generations(), [0]);
        assert!(got == Err(DOWN) || got == Ok(1), "{got:?}");
    }
    // A tenth of the calls, no floor: the first call of a window has no retry.
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.1)
        .min_per_second(0)
        .window(Duration::from_secs(1))
        .build()
        .unwrap();
    let budget = RetryBudget::new(policy, rt.now());
    let layer = RetryLayer::new(constant(10 * MS, 5))
        .runtime(rt.clone())
        .budget(budget.clone())
        .clone_requests(NeverAsked);
    for id in 0..5 {
        let svc = Svc::new(&rt, down(MS));
        let got = layer
            .layer(svc.clone())
            .oneshot(Tagged::new(id, &live))
            .await;
        assert_eq!((got, svc.generations()), (Err(DOWN), vec![0]), "call {id}");
    }
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn one_attempt_allowed_or_an_empty_budget_never_asks_the_copier() {
    on_every_runtime!(never_asked_without_a_possible_retry);
}

/// `ByClone` set explicitly is the default: the same attempts, the same clones (`n - 1` of
/// them); `NoClone` over a `Clone` request never clones it and sends it once.
async fn by_clone_and_no_clone<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let layer = RetryLayer::new(constant(10 * MS, 4)).runtime(rt.clone());
    let run = |service: BoxCloneService<Tagged, u32, E>, svc: Svc<Clocked<R>>| {
        let request = Tagged::new(1, &live);
        let clones = Arc::clone(&request.clones);
        async move {
            let got = service.oneshot(request).await;
            (got, svc.generations().len(), clones.load(SeqCst))
        }
    };
    let svc = Svc::new(&rt, down(MS));
    let default = run(BoxCloneService::new(layer.layer(svc.clone())), svc).await;
    let svc = Svc::new(&rt, down(MS));
    let explicit = run(
        BoxCloneService::new(layer.clone().clone_requests(ByClone).layer(svc.clone())),
        svc,
    )
    .await;
    assert_eq!(default, (Err(DOWN), 4, 3));
    assert_eq!(explicit, default);
    let svc = Svc::new(&rt, down(MS));
    let once = run(
        BoxCloneService::new(layer.clone().clone_requests(NoClone).layer(svc.clone())),
        svc,
    )
    .await;
    assert_eq!(once, (Err(DOWN), 1, 0));
    let svc = Svc::new(&rt, up_at(2, MS));
    let ok = run(BoxCloneService::new(layer.layer(svc.clone())), svc).await;
    assert_eq!(
        ok,
        (Ok(2), 2, 2),
        "a clone for each attempt a retry could follow"
    );
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn by_clone_is_the_default_and_no_clone_sends_a_clone_request_once() {
    on_every_runtime!(by_clone_and_no_clone);
}

// === schedules and budgets ===================================================================

/// `max_elapsed` ends the schedule before its delays would sum past it: 10 ms delays under a
/// 25 ms budget allow two retries, so the third attempt is the last possible and sends the
/// original unasked, however large `max_attempts` is. With full jitter (seeded), whatever
/// the number of attempts, the last one sends the original and is never asked for.
async fn max_elapsed_makes_the_last_attempt<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let backoff = Backoff::constant(10 * MS)
        .jitter(Jitter::None)
        .max_attempts(1_000)
        .max_elapsed(25 * MS)
        .build()
        .unwrap();
    let copier = Copier::always();
    let svc = Svc::new(&rt, down(MS));
    let got = RetryLayer::new(backoff)
        .runtime(rt.clone())
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(got, Err(DOWN));
    assert_eq!(svc.generations(), [1, 2, 0]);
    assert_eq!(copier.asks(), 2);

    for seed in 0..16_u64 {
        let backoff = Backoff::exponential(4 * MS)
            .max_attempts(1_000)
            .max_delay(40 * MS)
            .max_elapsed(60 * MS)
            .build()
            .unwrap();
        let copier = Copier::always();
        let svc = Svc::new(&rt, down(MS));
        let got = RetryLayer::new(backoff)
            .runtime(rt.clone())
            .seed(seed)
            .clone_requests(copier.clone())
            .layer(svc.clone())
            .oneshot(Tagged::new(1, &live))
            .await;
        assert_eq!(got, Err(DOWN));
        let sent = svc.generations();
        let n = u32::try_from(sent.len()).unwrap();
        let mut expected: Vec<u32> = (1..n).collect();
        expected.push(0);
        assert_eq!(sent, expected, "seed {seed}");
        assert_eq!(
            copier.asks(),
            n - 1,
            "seed {seed}: the last attempt unasked"
        );
    }
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_max_elapsed_schedule_sends_the_original_unasked_on_its_last_attempt() {
    on_every_runtime!(max_elapsed_makes_the_last_attempt);
}

/// Zero delays and `max_attempts(u32::MAX)`: thousands of attempts in no virtual time, each
/// asked for, until the service answers or the copier refuses.
async fn a_huge_zero_delay_schedule<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let backoff = Backoff::constant(Duration::ZERO)
        .jitter(Jitter::None)
        .max_attempts(u32::MAX)
        .build()
        .unwrap();
    let layer = RetryLayer::new(backoff).runtime(rt.clone());
    let start = rt.now();

    let copier = Copier::refusing_at(5_000);
    let svc = Svc::new(&rt, up_at(2_000, Duration::ZERO));
    let got = layer
        .clone()
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(got, Ok(2_000));
    assert_eq!((svc.calls(), copier.asks()), (2_000, 2_000));
    assert!(
        svc.generations().iter().all(|&g| g != 0),
        "only copies went out"
    );

    let copier = Copier::refusing_at(1_500);
    let svc = Svc::new(&rt, down(Duration::ZERO));
    let got = layer
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(2, &live))
        .await;
    assert_eq!(got, Err(DOWN));
    assert_eq!((svc.calls(), copier.asks()), (1_500, 1_500));
    assert_eq!(svc.generations().last(), Some(&0));
    assert_eq!(rt.now(), start, "no virtual time passed");
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_huge_zero_delay_schedule_ends_where_the_service_answers_or_the_copier_refuses() {
    on_every_runtime!(a_huge_zero_delay_schedule);
}

/// A budget of half the calls, no floor: a call whose deposit leaves no whole retry is never
/// asked; one that finds a retry asks once, withdraws it, and sends the original unasked on
/// its last possible attempt. After idle virtual days the window is empty again: the same
/// pattern, not a budget refilled (or overflowed) by the idle time.
async fn budget_across_idle_days<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.5)
        .min_per_second(0)
        .window(Duration::from_secs(1))
        .buckets(10)
        .build()
        .unwrap();
    let budget = RetryBudget::new(policy, rt.now());
    let layer = RetryLayer::new(constant(10 * MS, 4))
        .runtime(rt.clone())
        .budget(budget.clone());
    for day in 0..3_u32 {
        // (generations sent, asks) of each call, failing.
        let mut seen = Vec::new();
        for id in 0..3 {
            let copier = Copier::always();
            let svc = Svc::new(&rt, down(MS));
            let got = layer
                .clone()
                .clone_requests(copier.clone())
                .layer(svc.clone())
                .oneshot(Tagged::new(id, &live))
                .await;
            assert_eq!(got, Err(DOWN));
            seen.push((svc.generations(), copier.asks()));
        }
        assert_eq!(
            seen,
            [(vec![0], 0), (vec![1, 0], 1), (vec![0], 0)],
            "day {day}: half a retry, one retry, half a retry again"
        );
        rt.sleep(DAY * (day + 1)).await;
    }
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_budget_across_idle_virtual_days_asks_only_while_it_has_a_retry() {
    on_every_runtime!(budget_across_idle_days);
}

/// Two concurrent calls and a budget of one retry: both find it before their first attempt
/// (so both are asked), one withdraws it; the other, its copy failed, has no retry and its
/// original is never sent. The winner's retry is the last possible (budget spent): the
/// original, unasked.
async fn two_calls_race_for_one_retry<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.0)
        .min_per_second(1)
        .window(Duration::from_secs(1))
        .build()
        .unwrap();
    let budget = RetryBudget::new(policy, rt.now());
    let copier = Copier::always();
    let svc = Svc::new(&rt, down(5 * MS));
    let service = RetryLayer::new(constant(10 * MS, 4))
        .runtime(rt.clone())
        .budget(budget)
        .clone_requests(copier.clone())
        .layer(svc.clone());
    let a = rt.spawn(service.clone().oneshot(Tagged::new(1, &live)));
    let b = rt.spawn(service.oneshot(Tagged::new(2, &live)));
    assert_eq!((a.await.unwrap(), b.await.unwrap()), (Err(DOWN), Err(DOWN)));
    assert_eq!(
        copier.asks(),
        2,
        "both found the retry before their first attempt"
    );
    let mut sent = svc.generations();
    sent.sort_unstable();
    assert_eq!(
        sent,
        [0, 1, 2],
        "two copies, and one retry with an original"
    );
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn concurrent_calls_racing_for_the_last_retry_both_ask_and_one_retries() {
    on_every_runtime!(two_calls_race_for_one_retry);
}

/// Docs: "each call deposits, each retry withdraws". A copier's `None` (or `NoClone`) ends
/// the call with no retry, so it withdraws nothing: a budget of one retry a window keeps it
/// for the next call, whose copy is then retried.
async fn a_refusal_withdraws_nothing<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.0)
        .min_per_second(1)
        .window(Duration::from_secs(1))
        .build()
        .unwrap();
    let budget = RetryBudget::new(policy, rt.now());
    let layer = RetryLayer::new(constant(10 * MS, 4))
        .runtime(rt.clone())
        .budget(budget.clone());
    for _ in 0..3 {
        let svc = Svc::new(&rt, down(MS));
        let got = layer
            .clone()
            .clone_requests(NoClone)
            .layer(svc.clone())
            .oneshot(Tagged::new(1, &live))
            .await;
        assert_eq!((got, svc.generations()), (Err(DOWN), vec![0]));
        let copier = Copier::refusing_at(1);
        let svc = Svc::new(&rt, down(MS));
        let got = layer
            .clone()
            .clone_requests(copier.clone())
            .layer(svc.clone())
            .oneshot(Tagged::new(2, &live))
            .await;
        assert_eq!((got, svc.generations()), (Err(DOWN), vec![0]));
        assert_eq!(copier.asks(), 1);
        assert_eq!(budget.balance(rt.now()), 1, "nothing withdrawn");
    }
    let copier = Copier::always();
    let svc = Svc::new(&rt, down(MS));
    let got = layer
        .clone_requests(copier.clone())
        .layer(svc.clone())
        .oneshot(Tagged::new(3, &live))
        .await;
    assert_eq!((got, svc.generations()), (Err(DOWN), vec![1, 0]));
    assert_eq!((copier.asks(), budget.balance(rt.now())), (1, 0));
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_copier_refusal_withdraws_nothing_from_the_budget() {
    on_every_runtime!(a_refusal_withdraws_nothing);
}

// === deadlines, hints, retryable Ok values ===================================================

/// Docs: "The deadline is not consulted: an attempt it leaves no time to retry may still send
/// a copy." A 35 ms deadline, 1 ms attempts, 10 ms pauses: attempts at 0, 11, 22, 33; the
/// fourth leaves no time for a fifth, yet it was asked for and sent a copy. The original is
/// never sent and is dropped when the call ends, at once. With `min_attempt_time(15 ms)` a
/// retry needs its sleep to end more than 15 ms before the deadline: two attempts.
async fn the_deadline_and_min_attempt_time<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    for (min, sent, took) in [
        (None, vec![1, 2, 3, 4], 34 * MS),
        (Some(15 * MS), vec![1, 2], 12 * MS),
        (Some(50 * MS), vec![1], MS),
    ] {
        let copier = Copier::always();
        let svc = Svc::new(&rt, down(MS));
        let mut layer = RetryLayer::new(constant(10 * MS, 10))
            .runtime(rt.clone())
            .deadline(35 * MS);
        if let Some(min) = min {
            layer = layer.min_attempt_time(min);
        }
        let start = rt.now();
        let got = layer
            .clone_requests(copier.clone())
            .layer(svc.clone())
            .oneshot(Tagged::new(1, &live))
            .await;
        assert_eq!(got, Err(DOWN), "min {min:?}");
        assert_eq!(svc.generations(), sent, "min {min:?}");
        assert_eq!(copier.asks() as usize, sent.len(), "min {min:?}");
        assert_eq!(rt.now() - start, took, "min {min:?}: ends at once");
        assert_eq!(live.load(SeqCst), 0, "min {min:?}");
    }
}

#[test]
fn a_deadline_or_min_attempt_time_ending_the_call_still_sent_copies() {
    on_every_runtime!(the_deadline_and_min_attempt_time);
}

/// `honor_retry_after`: a hint within the deadline stretches the pause (30 ms, not 10); a
/// hint past the deadline ends the call at once after a copy was sent (the original never
/// goes out); `max_retry_after` shortens the sleep, but a whole hint past the deadline is
/// still not waited for; with no deadline the capped sleep is taken.
async fn hints_and_copies<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let busy = |wait: Duration| {
        move |n| {
            (
                MS,
                if n == 1 {
                    Err(Fault::Busy(wait))
                } else {
                    Ok(n)
                },
            )
        }
    };
    let base = || {
        RetryLayer::new(constant(10 * MS, 4))
            .runtime(rt.clone())
            .honor_retry_after()
    };
    // (layer, hint, answer, sent, asks, took)
    let cases = [
        (
            base().deadline(Duration::from_secs(1)),
            30 * MS,
            Ok(2),
            vec![1, 2],
            2,
            32 * MS,
        ),
        (
            base().deadline(100 * MS),
            500 * MS,
            Err(Error::Inner(Fault::Busy(500 * MS))),
            vec![1],
            1,
            MS,
        ),
        (
            base().deadline(100 * MS).max_retry_after(20 * MS),
            500 * MS,
            Err(Error::Inner(Fault::Busy(500 * MS))),
            vec![1],
            1,
            MS,
        ),
        (
            base().max_retry_after(20 * MS),
            500 * MS,
            Ok(2),
            vec![1, 2],
            2,
            22 * MS,
        ),
    ];
    for (i, (layer, hint, answer, sent, asks, took)) in cases.into_iter().enumerate() {
        let copier = Copier::always();
        let svc = Svc::new(&rt, busy(hint));
        let start = rt.now();
        let got = layer
            .clone_requests(copier.clone())
            .layer(svc.clone())
            .oneshot(Tagged::new(1, &live))
            .await;
        assert_eq!(got, answer, "case {i}");
        assert_eq!(svc.generations(), sent, "case {i}");
        assert_eq!(copier.asks(), asks, "case {i}");
        assert_eq!(rt.now() - start, took, "case {i}");
        assert_eq!(live.load(SeqCst), 0, "case {i}");
    }
}

#[test]
fn retry_after_hints_within_and_past_the_deadline_with_a_copier() {
    on_every_runtime!(hints_and_copies);
}

/// `retry_after_with` reads a hint from a 503-like `Ok` (`classify` judges it retryable): the
/// pause is the server's 40 ms. A copier refusing at its first ask makes the first attempt
/// the last: the 503 comes back as it was, an `Ok`, with no pause.
async fn ok_hints<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    for (refuse, answer, sent, took) in [(9, Ok(2), vec![1, 2], 42 * MS), (1, Ok(503), vec![0], MS)]
    {
        let svc = Svc::new(&rt, |n| (MS, Ok(if n == 1 { 503 } else { n })));
        let copier = Copier::refusing_at(refuse);
        let start = rt.now();
        let got = RetryLayer::new(constant(10 * MS, 4))
            .runtime(rt.clone())
            .classify(classify_5xx)
            .retry_after_with(|r: Result<&u32, &E>| match r {
                Ok(503) => Some(40 * MS),
                _ => None,
            })
            .clone_requests(copier.clone())
            .layer(svc.clone())
            .oneshot(Tagged::new(1, &live))
            .await;
        assert_eq!(got, answer, "refusing at {refuse}");
        assert_eq!(svc.generations(), sent, "refusing at {refuse}");
        assert_eq!(rt.now() - start, took, "refusing at {refuse}");
    }
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_hint_on_a_retryable_ok_value_is_honoured_and_a_refusal_returns_it_as_ok() {
    on_every_runtime!(ok_hints);
}

/// Retryable `Ok` values (5xx) and errors mixed. Docs: "when no retry follows, the last
/// attempt's result is returned as it was ... except that when the deadline leaves no time
/// for a retry after an error, a response an earlier attempt got ... is returned instead".
/// * No deadline, the copier refusing at the third ask: the third attempt's error.
/// * A deadline ending the call after an error: the latest retried response (`503` of the
///   third attempt, not the first's).
/// * A copier that stops where `max_attempts` would have: the same answer (docs: "as when the
///   attempts run out"), with and without a deadline.
async fn retried_ok_values<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    // Attempt 1 a 501, 2 an error, 3 a 503, 4 and on errors.
    let script = |n: u32| {
        (
            MS,
            match n {
                1 => Ok(501),
                3 => Ok(503),
                _ => Err(Fault::Down),
            },
        )
    };
    let run = |attempts: u32, deadline: Option<Duration>, copier: Copier| {
        let svc = Svc::new(&rt, script);
        let mut layer = RetryLayer::new(constant(10 * MS, attempts))
            .runtime(rt.clone())
            .classify(classify_5xx);
        if let Some(d) = deadline {
            layer = layer.deadline(d);
        }
        let service = layer.clone_requests(copier).layer(svc.clone());
        let request = Tagged::new(1, &live);
        async move { (service.oneshot(request).await, svc.generations()) }
    };
    // Attempts end at 1, 12, 23, 34, 45 ms.
    assert_eq!(
        run(9, None, Copier::refusing_at(4)).await,
        (Err(DOWN), vec![1, 2, 3, 0]),
        "the copier stopped: the last attempt's error"
    );
    assert_eq!(
        run(9, Some(40 * MS), Copier::always()).await,
        (Ok(503), vec![1, 2, 3, 4]),
        "the deadline after an error: the latest retried response"
    );
    assert_eq!(
        run(9, None, Copier::refusing_at(3)).await,
        (Ok(503), vec![1, 2, 0]),
        "a retryable Ok on the last attempt stays Ok"
    );
    for deadline in [None, Some(Duration::from_secs(1)), Some(30 * MS)] {
        let by_copier = run(9, deadline, Copier::refusing_at(4)).await;
        let by_schedule = run(4, deadline, Copier::always()).await;
        assert_eq!(by_copier, by_schedule, "deadline {deadline:?}");
    }
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn retryable_ok_values_come_back_as_the_docs_say_when_the_copier_or_deadline_ends_the_call() {
    on_every_runtime!(retried_ok_values);
}

/// Attempts: a 501, an error, a 503, then an error on the fourth, which ends at 34 ms. When
/// the schedule (`max_attempts(4)`) makes the fourth the last, its error is the answer. When
/// the copier does (refusing at the fourth ask of a longer schedule), the fourth attempt's
/// result is the answer only while the deadline leaves time for a retry (1 s); with 36 or
/// 40 ms it leaves none, so the deadline's rule answers with the latest retried response,
/// the third attempt's `Ok(503)`.
async fn a_copier_refusal_answers_by_the_rules<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let script = |n: u32| {
        (
            MS,
            match n {
                1 => Ok(501),
                3 => Ok(503),
                _ => Err(Fault::Down),
            },
        )
    };
    let run = |attempts: u32, deadline: Duration, copier: Copier| {
        let svc = Svc::new(&rt, script);
        let service = RetryLayer::new(constant(10 * MS, attempts))
            .runtime(rt.clone())
            .classify(classify_5xx)
            .deadline(deadline)
            .clone_requests(copier)
            .layer(svc.clone());
        let request = Tagged::new(1, &live);
        async move { (service.oneshot(request).await, svc.generations()) }
    };
    for deadline in [36 * MS, 40 * MS] {
        let by_schedule = run(4, deadline, Copier::always()).await;
        assert_eq!(by_schedule, (Err(DOWN), vec![1, 2, 3, 0]), "{deadline:?}");
        let by_copier = run(9, deadline, Copier::refusing_at(4)).await;
        assert_eq!(
            by_copier,
            (Ok(503), vec![1, 2, 3, 0]),
            "{deadline:?}: no time for a retry either: the deadline's rule answers"
        );
    }
    let by_copier = run(9, Duration::from_secs(1), Copier::refusing_at(4)).await;
    assert_eq!(
        by_copier,
        (Err(DOWN), vec![1, 2, 3, 0]),
        "time for a retry: the refused attempt's result is the answer"
    );
    assert_eq!(live.load(SeqCst), 0);
}

// Docs (`CloneRequest`): "Its result is the answer, as when the attempts run out, but for the
// layer's deadline rule: when the deadline leaves no time for a retry either, a response an
// earlier attempt got and retried ... comes back in place of a later error".
#[test]
fn a_copier_refusal_answers_with_the_last_result_or_by_the_deadlines_rule() {
    on_every_runtime!(a_copier_refusal_answers_by_the_rules);
}

// === stacks ==================================================================================

/// A `TimeoutLayer` above: it cuts the whole call (docs: "put a TimeoutLayer outside this
/// layer for that"); the running attempt, its copy and the kept original are dropped, and no
/// further attempt is made. A `TimeoutLayer` below: each attempt's timeout is an error the
/// layer retries; each timed-out copy is dropped with its attempt.
async fn timeout_layers<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));

    let copier = Copier::always();
    let svc = Svc::new(&rt, down(10 * MS));
    let stack = tower::ServiceBuilder::new()
        .layer(TimeoutLayer::new(35 * MS).runtime(rt.clone()))
        .layer(
            RetryLayer::new(constant(10 * MS, 10))
                .runtime(rt.clone())
                .clone_requests(copier.clone()),
        )
        .service(svc.clone());
    let start = rt.now();
    assert_eq!(
        stack.oneshot(Tagged::new(1, &live)).await,
        Err(Error::TimedOut)
    );
    assert_eq!(rt.now() - start, 35 * MS);
    // Attempts at 0 and 20 (cut at 35).
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 2], 2));
    assert_eq!((svc.running(), live.load(SeqCst)), (0, 0));
    rt.sleep(Duration::from_secs(1)).await;
    assert_eq!(svc.calls(), 2, "no attempt after the cut");

    // Attempts 1 and 2 hang; the third answers.
    let copier = Copier::always();
    let svc = Svc::new(&rt, |n| {
        if n < 3 {
            (Duration::from_secs(100), Ok(n))
        } else {
            (MS, Ok(n))
        }
    });
    let stack = tower::ServiceBuilder::new()
        .layer(
            RetryLayer::new(constant(10 * MS, 4))
                .runtime(rt.clone())
                .clone_requests(copier.clone()),
        )
        .layer(TimeoutLayer::new(20 * MS).runtime(rt.clone()))
        .service(svc.clone());
    let start = rt.now();
    assert_eq!(stack.oneshot(Tagged::new(2, &live)).await, Ok(3));
    assert_eq!(rt.now() - start, 20 * MS + 10 * MS + 20 * MS + 10 * MS + MS);
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 2, 3], 3));
    assert_eq!((svc.running(), live.load(SeqCst)), (0, 0));

    // Below, with the copier refusing at the second ask: the original's timeout is the answer.
    let copier = Copier::refusing_at(2);
    let svc = Svc::new(&rt, |n| (Duration::from_secs(100), Ok(n)));
    let stack = tower::ServiceBuilder::new()
        .layer(
            RetryLayer::new(constant(10 * MS, 4))
                .runtime(rt.clone())
                .clone_requests(copier.clone()),
        )
        .layer(TimeoutLayer::new(20 * MS).runtime(rt.clone()))
        .service(svc.clone());
    assert_eq!(
        stack.oneshot(Tagged::new(3, &live)).await,
        Err(Error::TimedOut)
    );
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 0], 2));
    assert_eq!((svc.running(), live.load(SeqCst)), (0, 0));
}

#[test]
fn timeout_layers_above_and_below_drop_every_copy_they_cut() {
    on_every_runtime!(timeout_layers);
}

fn open_breaker<R: Clock>(rt: &R, break_for: Duration) -> CircuitBreaker<R> {
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(break_for)
        .build()
        .unwrap();
    breaker.try_acquire().unwrap().failure();
    breaker
}

/// Docs (`CloneRequest`): "Under a `RetryLayer`, a `BreakerLayer` below is part of the
/// service: its refusal is an attempt that took the request." A breaker open for 25 ms:
/// * a copier that copies: refusals at 0, 10, 20 each consumed a copy (asked for, dropped
///   by the breaker), the attempt at 30 is the probe that reaches the service;
/// * `NoClone`: the one attempt is refused, and the refusal is the answer (the request is
///   gone; the service never saw it);
/// * a copier refusing at the second ask: the original goes to the open breaker.
async fn an_open_breaker_below<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));

    let breaker = open_breaker(&rt, 25 * MS);
    let copier = Copier::always();
    let svc = Svc::new(&rt, up_at(1, MS));
    let got = RetryLayer::new(constant(10 * MS, 6))
        .runtime(rt.clone())
        .clone_requests(copier.clone())
        .layer(BreakerLayer::new(breaker.clone()).layer(svc.clone()))
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(got, Ok(1));
    assert_eq!((svc.generations(), copier.asks()), (vec![4], 4));
    assert_eq!(live.load(SeqCst), 0);

    let breaker = open_breaker(&rt, 25 * MS);
    let svc = Svc::new(&rt, up_at(1, MS));
    let start = rt.now();
    let got = RetryLayer::new(constant(10 * MS, 6))
        .runtime(rt.clone())
        .clone_requests(NoClone)
        .layer(BreakerLayer::new(breaker).layer(svc.clone()))
        .oneshot(Tagged::new(2, &live))
        .await;
    assert!(
        matches!(got, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{got:?}"
    );
    assert_eq!((svc.calls(), rt.now() - start), (0, Duration::ZERO));
    assert_eq!(live.load(SeqCst), 0, "the refusal dropped the request");

    let breaker = open_breaker(&rt, 25 * MS);
    let copier = Copier::refusing_at(2);
    let svc = Svc::new(&rt, up_at(1, MS));
    let got = RetryLayer::new(constant(10 * MS, 6))
        .runtime(rt.clone())
        .clone_requests(copier.clone())
        .layer(BreakerLayer::new(breaker).layer(svc.clone()))
        .oneshot(Tagged::new(3, &live))
        .await;
    assert!(
        matches!(got, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{got:?}"
    );
    assert_eq!((svc.calls(), copier.asks()), (0, 2));
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn an_open_breaker_below_takes_the_request_of_each_attempt_it_refuses() {
    on_every_runtime!(an_open_breaker_below);
}

/// Docs: "Over a `BreakerLayer`, set `honor_retry_after` and a `deadline`: a call shed with
/// `Rejected::CircuitOpen` is then retried no sooner than the breaker's `retry_after`, and
/// returns at once when that is past the deadline." The retry after 25 ms sends the second
/// copy to the probe; a 20 ms deadline returns the refusal at once, one copy consumed.
async fn breaker_hints<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let breaker = open_breaker(&rt, 25 * MS);
    let copier = Copier::always();
    let svc = Svc::new(&rt, up_at(1, MS));
    let start = rt.now();
    let got = RetryLayer::new(constant(MS, 6))
        .runtime(rt.clone())
        .honor_retry_after()
        .deadline(Duration::from_secs(1))
        .clone_requests(copier.clone())
        .layer(BreakerLayer::new(breaker).layer(svc.clone()))
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(got, Ok(1));
    assert_eq!((svc.generations(), copier.asks()), (vec![2], 2));
    assert_eq!(rt.now() - start, 25 * MS + MS);

    let breaker = open_breaker(&rt, 25 * MS);
    let copier = Copier::always();
    let svc = Svc::new(&rt, up_at(1, MS));
    let start = rt.now();
    let got = RetryLayer::new(constant(MS, 6))
        .runtime(rt.clone())
        .honor_retry_after()
        .deadline(20 * MS)
        .clone_requests(copier.clone())
        .layer(BreakerLayer::new(breaker).layer(svc.clone()))
        .oneshot(Tagged::new(2, &live))
        .await;
    assert!(
        matches!(got, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{got:?}"
    );
    assert_eq!((svc.calls(), copier.asks()), (0, 1));
    assert_eq!(rt.now() - start, Duration::ZERO, "at once");
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_breaker_refusal_hint_past_the_deadline_returns_at_once_after_one_copy() {
    on_every_runtime!(breaker_hints);
}

/// A `BreakerLayer` below that waits in `poll_ready` (`wait_in_ready(10 ms)`) over a breaker
/// open for 25 ms. Docs: giving up "is never a `poll_ready` error ... the next call fails at
/// once with the refusal". At 0 and 10 the breaker's hint (25, 15 ms) ends past the wait:
/// readiness gives up at once and the call, a copy, is refused; at 20 the 5 ms wait is taken
/// and the third copy is the probe the service answers at 26. With no bound, the caller's
/// own readiness waits the break out and the first copy is served.
async fn a_breaker_waiting_in_ready_below<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    for (max_wait, sent, took) in [(Some(10 * MS), vec![3], 26 * MS), (None, vec![1], 26 * MS)] {
        let breaker = open_breaker(&rt, 25 * MS);
        let copier = Copier::always();
        let svc = Svc::new(&rt, up_at(1, MS));
        let start = rt.now();
        let got = RetryLayer::new(constant(10 * MS, 6))
            .runtime(rt.clone())
            .clone_requests(copier.clone())
            .layer(
                BreakerLayer::new(breaker)
                    .wait_in_ready(max_wait)
                    .layer(svc.clone()),
            )
            .oneshot(Tagged::new(1, &live))
            .await;
        assert_eq!(got, Ok(1), "{max_wait:?}");
        assert_eq!(svc.generations(), sent, "{max_wait:?}");
        assert_eq!(copier.asks() as usize, sent[0] as usize, "{max_wait:?}");
        assert_eq!(rt.now() - start, took, "{max_wait:?}");
        assert_eq!(live.load(SeqCst), 0, "{max_wait:?}");
    }
}

#[test]
fn a_breaker_waiting_in_ready_below_refuses_copies_until_it_admits() {
    on_every_runtime!(a_breaker_waiting_in_ready_below);
}

/// An `AdmitLayer` over a rate limiter (one call per 100 ms) below, in `Reject` mode, with
/// `honor_retry_after`: the first attempt is admitted and fails; the retry at 11 ms is refused
/// with `RateLimited { retry_after: 89 ms }`, which took its copy; the third attempt waits
/// the hint out and is admitted at 100 ms.
async fn a_rate_limiter_below<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let limiter = RateLimiter::builder(1, 100 * MS)
        .burst(1)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let copier = Copier::always();
    let svc = Svc::new(&rt, up_at(2, MS));
    let start = rt.now();
    let got = RetryLayer::new(constant(10 * MS, 5))
        .runtime(rt.clone())
        .honor_retry_after()
        .deadline(Duration::from_secs(1))
        .clone_requests(copier.clone())
        .layer(
            AdmitLayer::new(limiter, AdmitMode::Reject)
                .runtime(rt.clone())
                .layer(svc.clone()),
        )
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(got, Ok(2));
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 3], 3));
    assert_eq!(rt.now() - start, 101 * MS);
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_rate_limiter_below_refuses_a_copy_and_its_hint_is_waited_out() {
    on_every_runtime!(a_rate_limiter_below);
}

/// An `AdmitLayer` below, over a one-slot bulkhead held elsewhere until 25 ms, in each mode:
/// * `Reject`: each refused attempt took a copy (0, 10, 20); the fourth, at 30, is served.
/// * `WaitCall`: the first attempt (asked for: a retry could follow) waits in its response
///   future and is served at 25.
/// * `WaitReady`: `poll_ready` waits until 25, then the first attempt is served; a failing
///   first attempt's retry goes to a clone that waits for the slot again.
///
/// Every slot comes back; nothing is leaked.
async fn admit_below_in_each_mode<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    for (mode, up, sent, asks, took) in [
        (AdmitMode::Reject, 1, vec![4], 4, 31 * MS),
        (AdmitMode::WaitCall, 1, vec![1], 1, 26 * MS),
        (AdmitMode::WaitReady, 1, vec![1], 1, 26 * MS),
        (AdmitMode::WaitCall, 2, vec![1, 2], 2, 37 * MS),
        (AdmitMode::WaitReady, 2, vec![1, 2], 2, 37 * MS),
    ] {
        let bulkhead = Bulkhead::builder(1)
            .runtime(rt.clone())
            .max_queue(8)
            .build()
            .unwrap();
        let held = bulkhead.try_acquire_owned().unwrap();
        let release = rt.spawn({
            let rt = rt.clone();
            async move {
                rt.sleep(25 * MS).await;
                drop(held);
            }
        });
        let copier = Copier::always();
        let svc = Svc::new(&rt, up_at(up, MS));
        let start = rt.now();
        let got = RetryLayer::new(constant(10 * MS, 6))
            .runtime(rt.clone())
            .clone_requests(copier.clone())
            .layer(
                AdmitLayer::new(bulkhead.clone(), mode)
                    .runtime(rt.clone())
                    .layer(svc.clone()),
            )
            .oneshot(Tagged::new(1, &live))
            .await;
        release.await.unwrap();
        let case = format!("{mode:?}, up at {up}");
        assert_eq!(got, Ok(up), "{case}");
        assert_eq!((svc.generations(), copier.asks()), (sent, asks), "{case}");
        assert_eq!(rt.now() - start, took, "{case}");
        assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0), "{case}");
        assert_eq!(live.load(SeqCst), 0, "{case}");
    }
}

#[test]
fn an_admit_layer_below_in_each_mode_with_a_copier() {
    on_every_runtime!(admit_below_in_each_mode);
}

/// A `HedgeLayer` above: each hedged call is its own retrying call, asking the shared copier;
/// the winner's answer ends the other, dropping its copy and its kept original. A
/// `HedgeLayer` below: each copy the retry layer sends is hedged (cloned by the hedge), all
/// dropped at the end.
async fn hedges_and_retries<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let hedge = Hedge::builder()
        .runtime(rt.clone())
        .delay(5 * MS)
        .max_hedges(1)
        .build()
        .unwrap();
    // The first request hangs; the second fails fast; the third and on answer.
    let script = |n: u32| match n {
        1 => (Duration::from_secs(100), Ok(1)),
        2 => (MS, Err(Fault::Down)),
        _ => (MS, Ok(n)),
    };
    let copier = Copier::always();
    let svc = Svc::new(&rt, script);
    let stack = tower::ServiceBuilder::new()
        .layer(HedgeLayer::new(hedge.clone()))
        .layer(
            RetryLayer::new(constant(10 * MS, 4))
                .runtime(rt.clone())
                .clone_requests(copier.clone()),
        )
        .service(svc.clone());
    let start = rt.now();
    let request = Tagged::new(1, &live);
    let clones = Arc::clone(&request.clones);
    assert_eq!(stack.oneshot(request).await, Ok(3));
    assert_eq!(rt.now() - start, 5 * MS + MS + 10 * MS + MS);
    assert!(clones.load(SeqCst) >= 1, "the hedge sent a clone");
    // The primary's copy 1, then the hedge's copies 2 and 3 (the copier is shared).
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 2, 3], 3));
    assert_eq!((svc.running(), live.load(SeqCst)), (0, 0));

    // Below: the retry layer's first copy hangs, the hedge's clone of it answers at 6 ms;
    // the hanging attempt is dropped with the copy it holds.
    let copier = Copier::always();
    let svc = Svc::new(&rt, |n| match n {
        1 => (Duration::from_secs(100), Ok(1)),
        _ => (MS, Ok(n)),
    });
    let stack = tower::ServiceBuilder::new()
        .layer(
            RetryLayer::new(constant(10 * MS, 4))
                .runtime(rt.clone())
                .clone_requests(copier.clone()),
        )
        .layer(HedgeLayer::new(hedge))
        .service(svc.clone());
    let request = Tagged::new(2, &live);
    let clones = Arc::clone(&request.clones);
    let start = rt.now();
    assert_eq!(stack.oneshot(request).await, Ok(2));
    assert_eq!(rt.now() - start, 6 * MS);
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 1], 1));
    assert!(
        clones.load(SeqCst) >= 1,
        "the hedge cloned the copy it hedged"
    );
    assert_eq!((svc.running(), live.load(SeqCst)), (0, 0));
}

#[test]
fn hedge_layers_above_and_below_with_a_shared_copier() {
    on_every_runtime!(hedges_and_retries);
}

/// A `PipelineLayer` without retry below (`NoClone`, a bulkhead, an attempt timeout): the
/// retry layer's copies each go through the pipeline once; timeouts are retried. A
/// `PipelineLayer` above with `NoClone` sends the request once into the retry layer, which
/// copies it for its own attempts.
async fn pipelines_and_retries<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let bulkhead = Bulkhead::builder(1).runtime(rt.clone()).build().unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead.clone())
        .attempt_timeout(20 * MS)
        .build()
        .unwrap();
    let copier = Copier::always();
    let svc = Svc::new(&rt, |n| {
        if n == 1 {
            (Duration::from_secs(100), Ok(n))
        } else {
            (MS, Ok(n))
        }
    });
    let stack = tower::ServiceBuilder::new()
        .layer(
            RetryLayer::new(constant(10 * MS, 3))
                .runtime(rt.clone())
                .clone_requests(copier.clone()),
        )
        .layer(PipelineLayer::new(pipeline).clone_requests(NoClone))
        .service(svc.clone());
    assert_eq!(stack.oneshot(Tagged::new(1, &live)).await, Ok(2));
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 2], 2));
    assert_eq!((bulkhead.in_flight(), svc.running()), (0, 0));

    let outer = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(Duration::from_secs(1))
        .bulkhead(bulkhead.clone())
        .retry(constant(10 * MS, 5))
        .build()
        .unwrap();
    let copier = Copier::always();
    let svc = Svc::new(&rt, down(MS));
    let stack = tower::ServiceBuilder::new()
        .layer(PipelineLayer::new(outer).clone_requests(NoClone))
        .layer(
            RetryLayer::new(constant(10 * MS, 3))
                .runtime(rt.clone())
                .clone_requests(copier.clone()),
        )
        .service(svc.clone());
    assert_eq!(stack.oneshot(Tagged::new(2, &live)).await, Err(DOWN));
    assert_eq!((svc.generations(), copier.asks()), (vec![1, 2, 0], 2));
    assert_eq!((bulkhead.in_flight(), live.load(SeqCst)), (0, 0));
}

#[test]
fn pipeline_layers_below_and_above_a_retry_layer_with_a_copier() {
    on_every_runtime!(pipelines_and_retries);
}

/// An axum `Router`, `Request<Body>` (not `Clone`): a closure copies GETs whose body is known
/// empty and lets everything else go once. A flaky GET (503, 503, 200) is retried on copies;
/// a GET with a body and a streaming POST are sent once, and their 503 comes back as an `Ok`.
async fn an_axum_router<R: Runtime>(rt: Clocked<R>) {
    use axum::body::{Body, HttpBody};
    use axum::http::{Method, Request, Response, StatusCode};

    let served = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&served);
    let handler = move || {
        let n = seen.fetch_add(1, SeqCst) + 1;
        async move {
            if n.is_multiple_of(3) {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    };
    let router =
        axum::Router::new().route("/orders", axum::routing::get(handler.clone()).post(handler));
    let asks = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&asks);
    let copy_empty_gets = move |request: &Request<Body>| {
        counted.fetch_add(1, SeqCst);
        (request.method() == Method::GET && request.body().size_hint().exact() == Some(0)).then(
            || {
                Request::builder()
                    .method(Method::GET)
                    .uri(request.uri().clone())
                    .body(Body::empty())
                    .unwrap()
            },
        )
    };
    let service = RetryLayer::new(constant(10 * MS, 4))
        .runtime(rt.clone())
        .classify(
            |r: Result<&Response<Body>, &std::convert::Infallible>| match r {
                Ok(response) if response.status().is_server_error() => Verdict::RetryableFailure,
                _ => Verdict::Success,
            },
        )
        .clone_requests(copy_empty_gets)
        .layer(router);

    let start = rt.now();
    let get = Request::get("/orders").body(Body::empty()).unwrap();
    let response = service.clone().oneshot(get).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!((served.swap(0, SeqCst), asks.swap(0, SeqCst)), (3, 3));
    assert_eq!(rt.now() - start, 20 * MS);

    let get = Request::get("/orders").body(Body::from("q")).unwrap();
    let response = service.clone().oneshot(get).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!((served.swap(0, SeqCst), asks.swap(0, SeqCst)), (1, 1));

    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>("one")]);
    let post = Request::post("/orders")
        .body(Body::from_stream(chunks))
        .unwrap();
    let response = service.oneshot(post).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!((served.load(SeqCst), asks.load(SeqCst)), (1, 1));
}

#[test]
fn an_axum_router_gets_copied_empty_gets_and_single_streaming_posts() {
    on_every_runtime!(an_axum_router);
}

// === sharing ================================================================================

/// A copier holding a quota of 12 copies in an `Arc`, shared by 10 concurrent calls through
/// clones of one `BoxCloneService` (4 attempts each): every copy granted is one more attempt
/// (22 in all), every original is sent exactly once, and a call's asks are its copies plus
/// one refusal unless it reached its fourth attempt.
async fn a_shared_quota<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let quota = Arc::new(AtomicU32::new(12));
    let q = Arc::clone(&quota);
    let copier = move |request: &Tagged| {
        request.asks.fetch_add(1, SeqCst);
        q.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .ok()
            .map(|n| request.copy(100 + n))
    };
    let svc = Svc::new(&rt, down(MS));
    let service: BoxCloneService<Tagged, u32, E> = BoxCloneService::new(
        RetryLayer::new(constant(10 * MS, 4))
            .runtime(rt.clone())
            .clone_requests(copier)
            .layer(svc.clone()),
    );
    let mut tallies = Vec::new();
    let tasks: Vec<_> = (0..10)
        .map(|id| {
            let request = Tagged::new(id, &live);
            tallies.push((Arc::clone(&request.asks), Arc::clone(&request.attempts)));
            rt.spawn(service.clone().oneshot(request))
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Err(DOWN));
    }
    assert_eq!(quota.load(SeqCst), 0);
    assert_eq!(svc.calls(), 22);
    assert_eq!(svc.generations().iter().filter(|&&g| g == 0).count(), 10);
    for (asks, attempts) in &tallies {
        let (asks, attempts) = (asks.load(SeqCst), attempts.load(SeqCst));
        let expected = if attempts == 4 { 3 } else { attempts };
        assert_eq!(asks, expected, "{attempts} attempts");
    }
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_copier_sharing_a_quota_across_concurrent_calls_through_a_box_clone_service() {
    on_every_runtime!(a_shared_quota);
}

/// Docs (`clone_requests`): "Each service the layer makes gets a clone of it, which that
/// service's calls share." One clone per `layer()`; none per call, per clone of the service
/// or per retry; a copier's shared state (an `Arc` counter) is seen by every service.
async fn the_copier_is_not_cloned_per_call<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let copier = Copier::always();
    let layer = RetryLayer::new(constant(10 * MS, 3))
        .runtime(rt.clone())
        .clone_requests(copier.clone());
    let before = copier.clones();
    let svc = Svc::new(&rt, down(MS));
    let first = layer.layer(svc.clone());
    let second = layer.layer(svc.clone());
    let made = copier.clones() - before;
    assert_eq!(made, 2, "one clone per service made");
    let after_layering = copier.clones();
    let mut calls = Vec::new();
    for id in 0..10 {
        let service = if id % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        calls.push(service.oneshot(Tagged::new(id, &live)));
    }
    for got in futures_util::future::join_all(calls).await {
        assert_eq!(got, Err(DOWN));
    }
    assert_eq!(
        copier.clones(),
        after_layering,
        "no clone per call or per retry"
    );
    assert_eq!(copier.asks(), 20, "two asks per call, one counter");
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn the_copier_is_shared_by_the_layers_services_and_never_cloned_per_call() {
    on_every_runtime!(the_copier_is_not_cloned_per_call);
}

// === cancellation ============================================================================

/// Calls dropped at seeded random poll points, through an `AdmitLayer` (a 2-slot bulkhead,
/// waiting in the call) and a `TimeoutLayer` below the retry layer: every request and copy
/// is dropped, no attempt is left running, no further attempt is made, every slot comes
/// back, and no call sent more attempts than its asks allowed.
async fn drops_at_random_poll_points<R: Runtime>(rt: Clocked<R>) {
    for seed in 0..4_u64 {
        let mut rng = Rng::new(0x7e7a_0000 + seed);
        let live = Arc::new(AtomicI64::new(0));
        let bulkhead = Bulkhead::builder(2)
            .runtime(rt.clone())
            .max_queue(64)
            .build()
            .unwrap();
        let script: Arc<Vec<(u64, bool)>> =
            Arc::new((0..512).map(|_| (rng.below(40), rng.one_in(4))).collect());
        let svc = Svc::new(&rt, move |n| {
            let (delay, ok) = script[usize::try_from(n).unwrap() % script.len()];
            (
                Duration::from_millis(delay),
                if ok { Ok(n) } else { Err(Fault::Down) },
            )
        });
        let mut tasks = Vec::new();
        let mut tallies = Vec::new();
        for id in 0..24 {
            let copier = Copier::refusing_at(u32::try_from(rng.below(5)).unwrap() + 1);
            let mode = [AdmitMode::WaitCall, AdmitMode::WaitReady, AdmitMode::Reject]
                [usize::try_from(rng.below(3)).unwrap()];
            let request = Tagged::new(id, &live);
            tallies.push((Arc::clone(&request.attempts), copier.clone()));
            let stack = tower::ServiceBuilder::new()
                .layer(
                    RetryLayer::new(constant(5 * MS, 4))
                        .runtime(rt.clone())
                        .clone_requests(copier),
                )
                .layer(AdmitLayer::new(bulkhead.clone(), mode).runtime(rt.clone()))
                .layer(TimeoutLayer::new(30 * MS).runtime(rt.clone()))
                .service(svc.clone());
            let polls = u32::try_from(rng.below(12)).unwrap() + 1;
            tasks.push(rt.spawn(DropAfter {
                inner: Some(Box::pin(stack.oneshot(request))),
                polls,
            }));
        }
        for task in tasks {
            let _ = task.await.unwrap();
        }
        let calls = svc.calls();
        rt.sleep(Duration::from_secs(1)).await;
        assert_eq!(
            svc.calls(),
            calls,
            "seed {seed}: no attempt after the drops"
        );
        assert_eq!(live.load(SeqCst), 0, "seed {seed}: every request dropped");
        assert_eq!(svc.running(), 0, "seed {seed}: every attempt dropped");
        assert_eq!(
            (bulkhead.in_flight(), bulkhead.queued()),
            (0, 0),
            "seed {seed}"
        );
        for (attempts, copier) in &tallies {
            let (attempts, asks) = (attempts.load(SeqCst), copier.asks());
            assert!(
                attempts <= asks + 1 && attempts <= 4 && asks <= 3,
                "seed {seed}: {attempts} attempts after {asks} asks"
            );
        }
    }
}

#[test]
fn calls_dropped_at_random_poll_points_leave_nothing_behind() {
    on_every_runtime!(drops_at_random_poll_points);
}

/// Calls dropped at seeded random virtual times, in the attempt, in the pause or while a
/// retry's clone waits for readiness (a `Gated` service, slow to be ready): the same
/// invariants, and no readiness round starts after the drops.
async fn drops_at_random_times<R: Runtime>(rt: Clocked<R>) {
    for seed in 0..4_u64 {
        let mut rng = Rng::new(0xd20b_0000 + seed);
        let live = Arc::new(AtomicI64::new(0));
        let svc = Svc::new(&rt, down(7 * MS));
        let gated = Gated::new(svc.clone(), |r| {
            (Duration::from_millis(u64::from(r % 4) * 3), Ok(()))
        });
        let mut tasks = Vec::new();
        for id in 0..16 {
            let copier = Copier::refusing_at(u32::try_from(rng.below(6)).unwrap() + 1);
            let after = Duration::from_millis(rng.below(120));
            let service = RetryLayer::new(constant(5 * MS, 6))
                .runtime(rt.clone())
                .clone_requests(copier)
                .layer(gated.clone());
            let request = Tagged::new(id, &live);
            let rt2 = rt.clone();
            tasks.push(rt.spawn(async move {
                drop_after_time(&rt2, after, service.oneshot(request)).await
            }));
        }
        for task in tasks {
            let _ = task.await.unwrap();
        }
        let (calls, rounds) = (svc.calls(), gated.rounds());
        rt.sleep(Duration::from_secs(1)).await;
        assert_eq!(
            (svc.calls(), gated.rounds()),
            (calls, rounds),
            "seed {seed}"
        );
        assert_eq!(live.load(SeqCst), 0, "seed {seed}: every request dropped");
        assert_eq!(svc.running(), 0, "seed {seed}: every attempt dropped");
    }
}

#[test]
fn calls_dropped_at_random_virtual_times_leave_nothing_behind() {
    on_every_runtime!(drops_at_random_times);
}

/// A call dropped while a retry's copy is held but not yet sent (during the pause, and while
/// the retry's clone waits to be ready): both the copy (if made) and the original go.
async fn drop_in_the_pause<R: Runtime>(rt: Clocked<R>) {
    for (after, gate) in [
        (5 * MS, Duration::ZERO),
        (15 * MS, 20 * MS),
        (25 * MS, 20 * MS),
    ] {
        let live = Arc::new(AtomicI64::new(0));
        let copier = Copier::always();
        let svc = Svc::new(&rt, down(MS));
        let gated = Gated::new(svc.clone(), move |r| {
            (if r == 1 { Duration::ZERO } else { gate }, Ok(()))
        });
        let service = RetryLayer::new(constant(10 * MS, 4))
            .runtime(rt.clone())
            .clone_requests(copier.clone())
            .layer(gated.clone());
        let got = drop_after_time(&rt, after, service.oneshot(Tagged::new(1, &live))).await;
        assert!(got.is_none(), "{after:?}");
        assert_eq!(svc.generations(), [1], "{after:?}");
        assert_eq!(live.load(SeqCst), 0, "{after:?}");
        rt.sleep(Duration::from_secs(1)).await;
        assert_eq!(svc.calls(), 1, "{after:?}: no attempt after the drop");
    }
}

#[test]
fn a_call_dropped_in_the_pause_or_the_readiness_wait_drops_its_copy_and_original() {
    on_every_runtime!(drop_in_the_pause);
}

// === readiness ===============================================================================

/// Docs: "An error from the inner service's `poll_ready` is returned at once, unretried." A
/// service whose first readiness fails: the error comes back from the caller's readiness,
/// nothing is asked or sent.
async fn readiness_error_first<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let svc = Svc::new(&rt, down(MS));
    let gated = Gated::new(svc.clone(), |_| (5 * MS, Err(Fault::Busy(MS))));
    let start = rt.now();
    let got = RetryLayer::new(constant(10 * MS, 4))
        .runtime(rt.clone())
        .honor_retry_after()
        .clone_requests(NeverAsked)
        .layer(gated.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(got, Err(Error::Inner(Fault::Busy(MS))));
    assert_eq!((svc.calls(), gated.rounds()), (0, 1));
    assert_eq!(rt.now() - start, 5 * MS);
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_readiness_error_before_the_first_attempt_is_returned_and_nothing_is_asked() {
    on_every_runtime!(readiness_error_first);
}

/// A retry's clone whose readiness fails (after a 5 ms wait): that error is the answer at
/// once, whatever attempts are left; no further readiness round, nothing leaked. Failing at
/// the second round of five attempts, and at the third.
async fn readiness_error_on_a_retry<R: Runtime>(rt: Clocked<R>) {
    for failing in [2_u32, 3] {
        let live = Arc::new(AtomicI64::new(0));
        let copier = Copier::always();
        let svc = Svc::new(&rt, down(MS));
        let gated = Gated::new(svc.clone(), move |r| {
            if r == failing {
                (5 * MS, Err(Fault::Busy(MS)))
            } else {
                (Duration::ZERO, Ok(()))
            }
        });
        let start = rt.now();
        let got = RetryLayer::new(constant(10 * MS, 5))
            .runtime(rt.clone())
            .honor_retry_after()
            .clone_requests(copier.clone())
            .layer(gated.clone())
            .oneshot(Tagged::new(1, &live))
            .await;
        let attempts = failing - 1;
        assert_eq!(got, Err(Error::Inner(Fault::Busy(MS))), "round {failing}");
        assert_eq!(svc.calls(), attempts, "round {failing}");
        assert_eq!(gated.rounds(), failing, "round {failing}: not retried");
        assert_eq!(
            rt.now() - start,
            attempts * (MS + 10 * MS) + 5 * MS,
            "round {failing}: at once"
        );
        let asks = copier.asks();
        assert!(
            asks == attempts || asks == attempts + 1,
            "round {failing}: {asks} asks"
        );
        assert!(svc.generations().iter().all(|&g| g != 0), "round {failing}");
        assert_eq!(live.load(SeqCst), 0, "round {failing}");
    }
}

#[test]
fn a_readiness_error_on_a_retry_is_returned_at_once_unretried() {
    on_every_runtime!(readiness_error_on_a_retry);
}

/// A service pending in `poll_ready` for 30 ms on each retry's clone: each retry waits for
/// it, then sends the copy asked for last (copies in order, the original last), and the
/// copier is asked once per attempt a retry could follow, never per readiness poll. A
/// deadline does not cut the readiness wait of a retry it allowed.
async fn readiness_pending<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let copier = Copier::always();
    let svc = Svc::new(&rt, down(MS));
    let gated = Gated::new(svc.clone(), |r| {
        (if r == 1 { Duration::ZERO } else { 30 * MS }, Ok(()))
    });
    let start = rt.now();
    let got = RetryLayer::new(constant(10 * MS, 3))
        .runtime(rt.clone())
        .clone_requests(copier.clone())
        .layer(gated.clone())
        .oneshot(Tagged::new(1, &live))
        .await;
    assert_eq!(got, Err(DOWN));
    assert_eq!(svc.generations(), [1, 2, 0]);
    assert_eq!(copier.asks(), 2);
    assert_eq!(gated.rounds(), 3);
    assert_eq!(gated.round_starts(), [Duration::ZERO, 11 * MS, 52 * MS]);
    assert_eq!(rt.now() - start, 3 * MS + 2 * (10 * MS + 30 * MS));

    // A 20 ms deadline allows the retry at 11 ms; its readiness wait runs past the deadline.
    let copier = Copier::always();
    let svc = Svc::new(&rt, up_at(2, MS));
    let gated = Gated::new(svc.clone(), |r| {
        (if r == 1 { Duration::ZERO } else { 30 * MS }, Ok(()))
    });
    let start = rt.now();
    let got = RetryLayer::new(constant(10 * MS, 3))
        .runtime(rt.clone())
        .deadline(20 * MS)
        .clone_requests(copier.clone())
        .layer(gated.clone())
        .oneshot(Tagged::new(2, &live))
        .await;
    assert_eq!(got, Ok(2));
    assert_eq!(svc.generations(), [1, 2]);
    assert_eq!(rt.now() - start, MS + 10 * MS + 30 * MS + MS);
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_retry_waits_for_its_clones_readiness_and_sends_the_copy_asked_for() {
    on_every_runtime!(readiness_pending);
}

/// A `TimeoutLayer` above a retry whose clone waits 100 ms to be ready: the timeout cuts the
/// readiness wait; the copy (if already asked for) and the original are dropped.
async fn timeout_during_readiness<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let copier = Copier::always();
    let svc = Svc::new(&rt, down(MS));
    let gated = Gated::new(svc.clone(), |r| {
        (if r == 1 { Duration::ZERO } else { 100 * MS }, Ok(()))
    });
    let stack = tower::ServiceBuilder::new()
        .layer(TimeoutLayer::new(40 * MS).runtime(rt.clone()))
        .layer(
            RetryLayer::new(constant(10 * MS, 4))
                .runtime(rt.clone())
                .clone_requests(copier.clone()),
        )
        .service(gated.clone());
    let start = rt.now();
    assert_eq!(
        stack.oneshot(Tagged::new(1, &live)).await,
        Err(Error::TimedOut)
    );
    assert_eq!(rt.now() - start, 40 * MS);
    assert_eq!((svc.generations(), gated.rounds()), (vec![1], 2));
    assert_eq!(live.load(SeqCst), 0);
    rt.sleep(Duration::from_secs(1)).await;
    assert_eq!((svc.calls(), gated.rounds()), (1, 2));
}

#[test]
fn a_timeout_above_cuts_a_retrys_readiness_wait_and_drops_the_requests() {
    on_every_runtime!(timeout_during_readiness);
}

/// A request-dependent closure under concurrency: even ids are copied, odd ones go once;
/// spawned on the runtime through clones of one service with a bulkhead waiting in
/// `poll_ready` below.
async fn per_request_decisions<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let bulkhead = Bulkhead::builder(2)
        .runtime(rt.clone())
        .max_queue(64)
        .build()
        .unwrap();
    let svc = Svc::new(&rt, down(3 * MS));
    let service = RetryLayer::new(constant(10 * MS, 3))
        .runtime(rt.clone())
        .clone_requests(|r: &Tagged| {
            r.asks.fetch_add(1, SeqCst);
            r.id.is_multiple_of(2).then(|| r.copy(1))
        })
        .layer(
            AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
                .runtime(rt.clone())
                .layer(svc.clone()),
        );
    let mut tallies = Vec::new();
    let tasks: Vec<_> = (0..12_u32)
        .map(|id| {
            let request = Tagged::new(id, &live);
            tallies.push((id, Arc::clone(&request.asks), Arc::clone(&request.attempts)));
            rt.spawn(service.clone().oneshot(request))
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), Err(DOWN));
    }
    for (id, asks, attempts) in tallies {
        let expected = if id.is_multiple_of(2) { (2, 3) } else { (1, 1) };
        assert_eq!(
            (asks.load(SeqCst), attempts.load(SeqCst)),
            expected,
            "request {id}"
        );
    }
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_closure_deciding_per_request_under_concurrency_through_a_waiting_bulkhead() {
    on_every_runtime!(per_request_decisions);
}

/// The response future's `Debug` does not need the request to be `Debug`-printed by the
/// caller, and a `now_or_never` poll of a call whose first attempt answers at once gives the
/// answer on the first poll, its copy and original dropped.
async fn immediate_answers<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let copier = Copier::always();
    let svc = Svc::new(&rt, |n| (Duration::ZERO, Ok(n)));
    let mut service = RetryLayer::new(constant(10 * MS, 3))
        .runtime(rt.clone())
        .clone_requests(copier.clone())
        .layer(svc.clone());
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .unwrap();
    let future = service.call(Tagged::new(1, &live));
    assert!(!format!("{future:?}").is_empty());
    assert_eq!(future.now_or_never(), Some(Ok(1)));
    assert_eq!((svc.generations(), copier.asks()), (vec![1], 1));
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_call_answering_at_once_is_ready_on_its_first_poll_and_drops_its_original() {
    on_every_runtime!(immediate_answers);
}
