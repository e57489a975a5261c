#![cfg(all(feature = "tower", feature = "toml"))]
//! Hostile black-box tests of how a `HedgeLayer` gets each attempt's request
//! (`HedgeLayer::clone_requests`, `CloneRequest`, `ByClone`, `NoClone`) and of
//! `MakeAttempt::repeatable` through `Hedge::call`, written from the rustdoc only: copiers
//! that stop at the first, a middle or the last ask for every `max_hedges` from 1 to 5;
//! retryable, fatal and hinted failures racing with hedges; hedge budgets that refuse;
//! response futures dropped or polled at seeded points; live layers reloaded between and
//! during calls; stacks with `RetryLayer`, `TimeoutLayer`, `AdmitLayer` in every mode and
//! `BoxCloneService`; an axum `Router`. Every scenario but axum's runs on every runtime, in
//! virtual time.

mod common;

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::rng::Rng;
use futures_util::future::{Either, join, join_all, select};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::{DefaultClassifier, ErrorsWhere, Hinted};
use tidewall::config::{Config, Registry};
use tidewall::hedge::{Hedge, Idempotent, MakeAttempt};
use tidewall::rt::{Clock, Runtime};
use tidewall::telemetry::EventKind;
use tidewall::testing::Clocked;
use tidewall::tower::{AdmitLayer, AdmitMode, ByClone, CloneRequest, HedgeLayer, NoClone};
use tidewall::tower::{RetryLayer, TimeoutLayer};
use tidewall::{Backoff, Error, Jitter};
use tower::ServiceExt as _;
use tower::util::BoxCloneService;
use tower_layer::Layer;
use tower_service::Service;

const MS: Duration = Duration::from_millis(1);

/// The backend's own failures: retryable by default, `Busy` carrying a wait in ms, `Fatal`
/// not worth another copy under the classifiers that say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Down,
    Busy(u64),
    Fatal,
}

type E = Error<Fault>;

const DOWN: E = Error::Inner(Fault::Down);

// --- requests that know where they came from ------------------------------------------------

/// What a backend can read of a request: its generation (0 for the caller's own value, `n`
/// for the copy made at its copier's `n`th ask).
trait Tagged: Send + 'static {
    fn generation(&self) -> u32;
}

/// A request that is not `Clone`; every value alive is counted in `live`.
#[derive(Debug)]
struct Req {
    generation: u32,
    write: bool,
    live: Arc<AtomicI64>,
}

impl Req {
    fn new(generation: u32, write: bool, live: &Arc<AtomicI64>) -> Self {
        live.fetch_add(1, SeqCst);
        Self {
            generation,
            write,
            live: Arc::clone(live),
        }
    }
}

impl Drop for Req {
    fn drop(&mut self) {
        self.live.fetch_sub(1, SeqCst);
    }
}

impl Tagged for Req {
    fn generation(&self) -> u32 {
        self.generation
    }
}

/// A `Clone` request whose clones are counted, and whose live values are.
#[derive(Debug)]
struct Counted {
    clones: Arc<AtomicU32>,
    live: Arc<AtomicI64>,
}

impl Counted {
    fn new(clones: &Arc<AtomicU32>, live: &Arc<AtomicI64>) -> Self {
        live.fetch_add(1, SeqCst);
        Self {
            clones: Arc::clone(clones),
            live: Arc::clone(live),
        }
    }
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, SeqCst);
        Self::new(&self.clones, &self.live)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.live.fetch_sub(1, SeqCst);
    }
}

impl Tagged for Counted {
    fn generation(&self) -> u32 {
        0
    }
}

// --- a copier that counts, times and refuses on cue -------------------------------------------

#[derive(Default)]
struct CopyLog {
    asks: AtomicU32,
    at: Mutex<Vec<Instant>>,
    /// Generations of the requests the copier was shown.
    shown: Mutex<Vec<u32>>,
}

/// Copies a `Req` (generation = its ask number), except at ask `refuse_at` (from 1), or
/// for writes when `refuse_writes`.
#[derive(Clone)]
struct Copier<R> {
    rt: R,
    log: Arc<CopyLog>,
    live: Arc<AtomicI64>,
    refuse_at: Option<u32>,
    refuse_writes: bool,
    offset: u32,
}

impl<R: Clock> Copier<R> {
    fn new(rt: &R, live: &Arc<AtomicI64>) -> Self {
        Self {
            rt: rt.clone(),
            log: Arc::default(),
            live: Arc::clone(live),
            refuse_at: None,
            refuse_writes: false,
            offset: 0,
        }
    }

    fn refuse_at(mut self, ask: u32) -> Self {
        self.refuse_at = Some(ask);
        self
    }

    fn refuse_writes(mut self) -> Self {
        self.refuse_writes = true;
        self
    }

    /// Copies get generations `offset + ask` (to tell two copiers' copies apart).
    fn offset(mut self, offset: u32) -> Self {
        self.offset = offset;
        self
    }

    fn asks(&self) -> u32 {
        self.log.asks.load(SeqCst)
    }

    fn ask_times(&self, started: Instant) -> Vec<Duration> {
        self.log
            .at
            .lock()
            .unwrap()
            .iter()
            .map(|t| *t - started)
            .collect()
    }

    fn shown(&self) -> Vec<u32> {
        self.log.shown.lock().unwrap().clone()
    }

    fn reset(&self) {
        self.log.asks.store(0, SeqCst);
        self.log.at.lock().unwrap().clear();
        self.log.shown.lock().unwrap().clear();
    }
}

impl<R: Clock> CloneRequest<Req> for Copier<R> {
    fn clone_request(&self, request: &Req) -> Option<Req> {
        let ask = self.log.asks.fetch_add(1, SeqCst) + 1;
        self.log.at.lock().unwrap().push(self.rt.now());
        self.log.shown.lock().unwrap().push(request.generation);
        if self.refuse_at == Some(ask) || (self.refuse_writes && request.write) {
            return None;
        }
        Some(Req::new(self.offset + ask, request.write, &self.live))
    }
}

// --- a backend that follows a script -------------------------------------------------------

/// One request the backend got: its number (from 1), the request's generation, when.
#[derive(Debug, Clone, Copy)]
struct Sent {
    generation: u32,
    at: Instant,
}

#[derive(Default)]
struct Log {
    calls: AtomicU32,
    running: AtomicI64,
    sent: Mutex<Vec<Sent>>,
}

/// Counts an attempt running until dropped (finished or cancelled).
struct Running(Arc<Log>);

impl Running {
    fn new(log: &Arc<Log>) -> Self {
        log.running.fetch_add(1, SeqCst);
        Self(Arc::clone(log))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, SeqCst);
    }
}

type Script = Arc<dyn Fn(u32) -> (u64, Option<Fault>) + Send + Sync>;

/// Answers its `n`th request (from 1) after `script(n).0` ms with `Ok(n)`, or with the
/// fault `script(n).1`; holds the request until then.
#[derive(Clone)]
struct Backend<R> {
    rt: R,
    script: Script,
    log: Arc<Log>,
}

impl<R: Clock> Backend<R> {
    fn new(rt: &R, script: impl Fn(u32) -> (u64, Option<Fault>) + Send + Sync + 'static) -> Self {
        Self {
            rt: rt.clone(),
            script: Arc::new(script),
            log: Arc::default(),
        }
    }

    /// Every request takes `ms` and succeeds.
    fn slow(rt: &R, ms: u64) -> Self {
        Self::new(rt, move |_| (ms, None))
    }

    fn calls(&self) -> u32 {
        self.log.calls.load(SeqCst)
    }

    fn running(&self) -> i64 {
        self.log.running.load(SeqCst)
    }

    fn sent(&self) -> Vec<Sent> {
        self.log.sent.lock().unwrap().clone()
    }

    fn sent_at(&self, started: Instant) -> Vec<Duration> {
        self.sent().iter().map(|s| s.at - started).collect()
    }

    fn generations(&self) -> Vec<u32> {
        self.sent().iter().map(|s| s.generation).collect()
    }

    fn reset(&self) {
        self.log.calls.store(0, SeqCst);
        self.log.sent.lock().unwrap().clear();
    }
}

impl<R: Clock, Q: Tagged> Service<Q> for Backend<R> {
    type Response = u32;
    type Error = E;
    type Future = Pin<Box<dyn Future<Output = Result<u32, E>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Q) -> Self::Future {
        let n = self.log.calls.fetch_add(1, SeqCst) + 1;
        self.log.sent.lock().unwrap().push(Sent {
            generation: request.generation(),
            at: self.rt.now(),
        });
        let (ms, fault) = (self.script)(n);
        let wait = self.rt.sleep(Duration::from_millis(ms));
        let running = Running::new(&self.log);
        Box::pin(async move {
            wait.await;
            drop(request);
            drop(running);
            match fault {
                None => Ok(n),
                Some(fault) => Err(Error::Inner(fault)),
            }
        })
    }
}

fn hedge<R: Clock>(rt: &R, delay_ms: u64, max_hedges: u32) -> Hedge<R> {
    Hedge::builder()
        .runtime(rt.clone())
        .delay(Duration::from_millis(delay_ms))
        .max_hedges(max_hedges)
        .build()
        .unwrap()
}

/// A hedge whose classifier reads a `Busy(ms)` fault's wait as its hint.
fn hinted<R: Clock>(
    rt: &R,
    delay_ms: u64,
    max_hedges: u32,
) -> Hedge<R, impl tidewall::classify::Classify<u32, E> + Clone + Send + Sync + 'static> {
    let hint = |r: Result<&u32, &E>| match r {
        Err(Error::Inner(Fault::Busy(ms))) => Some(Duration::from_millis(*ms)),
        _ => None,
    };
    Hedge::builder()
        .runtime(rt.clone())
        .delay(Duration::from_millis(delay_ms))
        .max_hedges(max_hedges)
        .classify(Hinted(DefaultClassifier, hint))
        .build()
        .unwrap()
}

/// The attempts a hedged call makes when every attempt succeeds: attempt `i` (from 0) is
/// launched at `i * delay` unless an answer came earlier or `limit` attempts were made;
/// returns (attempts, winner from 1, when it answered).
fn expected(latency: &[u64], delay: u64, limit: usize) -> (u32, u32, u64) {
    let (mut best, mut winner, mut made) = (u64::MAX, 0, 0);
    for (i, lat) in latency.iter().enumerate().take(limit) {
        let at = i as u64 * delay;
        if at >= best {
            break;
        }
        made += 1;
        if at + lat < best {
            best = at + lat;
            winner = made;
        }
    }
    (made, winner, best)
}

// === 1. asks before every attempt, the first included ========================================

/// With a copier that always copies and a backend slow enough for every hedge, each of the
/// `1 + max_hedges` attempts is asked for and sends a copy (the caller's own value is never
/// sent), each ask at the instant its attempt is sent; the last hedge, fastest, answers.
async fn asks_before_every_attempt<R: Runtime>(rt: Clocked<R>) {
    for max_hedges in 1..=5u32 {
        let live = Arc::new(AtomicI64::new(0));
        let copier = Copier::new(&rt, &live);
        // Attempt i (from 1) takes 1000 - 100 i ms: the last launched answers first.
        let backend = Backend::new(&rt, |n| (1000 - 100 * u64::from(n), None));
        let started = rt.now();
        let answer = HedgeLayer::new(hedge(&rt, 20, max_hedges))
            .clone_requests(copier.clone())
            .layer(backend.clone())
            .oneshot(Req::new(0, false, &live))
            .await;
        let attempts = max_hedges + 1;
        assert_eq!(answer, Ok(attempts), "max_hedges {max_hedges}");
        assert_eq!(backend.calls(), attempts, "max_hedges {max_hedges}");
        assert_eq!(
            copier.asks(),
            attempts,
            "one ask per attempt, the first included"
        );
        let copies: Vec<u32> = (1..=attempts).collect();
        assert_eq!(backend.generations(), copies, "every attempt sent a copy");
        assert_eq!(
            copier.ask_times(started),
            backend.sent_at(started),
            "each ask made as its attempt is sent"
        );
        let launches: Vec<Duration> = (0..attempts).map(|i| i * 20 * MS).collect();
        assert_eq!(backend.sent_at(started), launches);
        assert!(
            copier.shown().iter().all(|g| *g == 0),
            "asked with the caller's own value"
        );
        assert_eq!(
            rt.now() - started,
            Duration::from_millis(u64::from(max_hedges) * 20 + 1000 - 100 * u64::from(attempts))
        );
        assert_eq!(
            backend.running(),
            0,
            "no attempt left running after the answer"
        );
        assert_eq!(live.load(SeqCst), 0, "every copy and the original dropped");
    }
}

#[test]
fn a_hedge_layer_asks_its_copier_before_every_attempt_the_first_included() {
    on_every_runtime!(asks_before_every_attempt);
}

// === 2. None at the first, a middle or the last ask ========================================

/// For every `max_hedges` in 1..=5 and every ask `k` the copier refuses: exactly `k` asks
/// and `k` attempts, the `k`th sending the caller's own value and no hedge after it, though
/// hedges were left; the answer is the fastest of those `k`.
async fn none_at_every_ask<R: Runtime>(rt: Clocked<R>) {
    for max_hedges in 1..=5u32 {
        for k in 1..=max_hedges + 1 {
            let live = Arc::new(AtomicI64::new(0));
            let copier = Copier::new(&rt, &live).refuse_at(k);
            let backend = Backend::new(&rt, |n| (1000 - 100 * u64::from(n), None));
            let started = rt.now();
            let answer = HedgeLayer::new(hedge(&rt, 20, max_hedges))
                .clone_requests(copier.clone())
                .layer(backend.clone())
                .oneshot(Req::new(0, false, &live))
                .await;
            let case = format!("max_hedges {max_hedges}, None at ask {k}");
            assert_eq!(answer, Ok(k), "{case}: the last sent is the fastest");
            assert_eq!(copier.asks(), k, "{case}: no ask after the None");
            let mut generations: Vec<u32> = (1..k).collect();
            generations.push(0);
            assert_eq!(backend.generations(), generations, "{case}");
            assert_eq!(
                rt.now() - started,
                Duration::from_millis(u64::from(k - 1) * 20 + 1000 - 100 * u64::from(k)),
                "{case}"
            );
            assert_eq!(backend.running(), 0, "{case}");
            assert_eq!(live.load(SeqCst), 0, "{case}");
        }
    }
}

#[test]
fn a_copier_refusing_at_any_ask_ends_the_hedging_at_that_attempt() {
    on_every_runtime!(none_at_every_ask);
}

/// A request never copied whose only attempt fails: the call ends with that failure at
/// once, though every running attempt failed and five hedges were allowed (which would
/// otherwise start the next at once). `NoClone` and a closure returning `None` alike.
async fn refused_first_and_failed_ends_at_once<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let backend = Backend::new(&rt, |_| (5, Some(Fault::Down)));
    let started = rt.now();
    let answer = HedgeLayer::new(hedge(&rt, 20, 5))
        .clone_requests(NoClone)
        .layer(backend.clone())
        .oneshot(Req::new(0, false, &live))
        .await;
    assert_eq!(answer, Err(DOWN));
    assert_eq!((backend.calls(), rt.now() - started), (1, 5 * MS));
    assert_eq!(backend.generations(), [0]);

    backend.reset();
    let copier = Copier::new(&rt, &live).refuse_at(1);
    let started = rt.now();
    let answer = HedgeLayer::new(hedge(&rt, 20, 5))
        .clone_requests(copier.clone())
        .layer(backend.clone())
        .oneshot(Req::new(0, false, &live))
        .await;
    assert_eq!(answer, Err(DOWN));
    assert_eq!((backend.calls(), copier.asks()), (1, 1));
    assert_eq!(rt.now() - started, 5 * MS);

    // And a slow one: `NoClone` never hedges.
    let slow = Backend::slow(&rt, 500);
    let answer = HedgeLayer::new(hedge(&rt, 20, 5))
        .clone_requests(NoClone)
        .layer(slow.clone())
        .oneshot(Req::new(0, false, &live))
        .await;
    assert_eq!((answer, slow.calls()), (Ok(1), 1));
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_request_sent_itself_is_never_hedged_even_after_it_fails() {
    on_every_runtime!(refused_first_and_failed_ends_at_once);
}

/// `ByClone` is the default: the same attempts, clones and answer as no copier at all, one
/// clone per attempt (the first included), and every clone and the original dropped.
async fn by_clone_is_the_default<R: Runtime>(rt: Clocked<R>) {
    for max_hedges in 0..=4u32 {
        let mut seen = Vec::new();
        for explicit in [false, true] {
            let (clones, live) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicI64::new(0)));
            let backend = Backend::slow(&rt, 90);
            let layer = HedgeLayer::new(hedge(&rt, 20, max_hedges));
            let request = Counted::new(&clones, &live);
            let answer = if explicit {
                layer
                    .clone_requests(ByClone)
                    .layer(backend.clone())
                    .oneshot(request)
                    .await
            } else {
                layer.layer(backend.clone()).oneshot(request).await
            };
            assert_eq!(live.load(SeqCst), 0, "max_hedges {max_hedges}");
            assert_eq!(backend.running(), 0);
            seen.push((answer, backend.calls(), clones.load(SeqCst)));
        }
        assert_eq!(seen[0], seen[1], "ByClone is the default");
        let attempts = (max_hedges + 1).min(5);
        assert_eq!(seen[0].0, Ok(1), "max_hedges {max_hedges}");
        assert_eq!(seen[0].1, attempts, "max_hedges {max_hedges}");
        // One clone per attempt, the first included: with `max_hedges` 0 too, though no
        // hedge can follow it (the `HedgeLayer` paragraph of `CloneRequest`: "asks before
        // every attempt, the first included").
        assert_eq!(seen[0].2, attempts, "one clone per attempt");
    }
}

#[test]
fn by_clone_is_the_hedge_layers_default_and_clones_once_per_attempt() {
    on_every_runtime!(by_clone_is_the_default);
}

// === 3. the first answer wins, with retryable and fatal failures racing =====================

/// Seeded latencies, `max_hedges` and refusing ask: the answer is the attempt that answered
/// first among those launched, at its instant, with the attempts and asks the policy allows.
async fn first_answer_wins<R: Runtime>(rt: Clocked<R>) {
    let mut rng = Rng::new(0x4ED9E);
    for round in 0..40 {
        let max_hedges = u32::try_from(1 + rng.below(5)).unwrap();
        let refuse = rng.below(u64::from(max_hedges) + 2);
        let refuse_at = u32::try_from(refuse).unwrap();
        // Attempt i finishes at an instant ≡ 5 + i (mod 10): no ties with launches (at
        // multiples of 20) or with each other.
        let latency: Vec<u64> = (0..=u64::from(max_hedges))
            .map(|i| 10 * rng.below(15) + 5 + i)
            .collect();
        let limit = if refuse_at == 0 {
            max_hedges + 1
        } else {
            refuse_at.min(max_hedges + 1)
        };
        let (made, winner, at) = expected(&latency, 20, limit as usize);
        let live = Arc::new(AtomicI64::new(0));
        let mut copier = Copier::new(&rt, &live);
        if refuse_at > 0 {
            copier = copier.refuse_at(refuse_at);
        }
        let script = latency.clone();
        let backend = Backend::new(&rt, move |n| (script[n as usize - 1], None));
        let started = rt.now();
        let answer = HedgeLayer::new(hedge(&rt, 20, max_hedges))
            .clone_requests(copier.clone())
            .layer(backend.clone())
            .oneshot(Req::new(0, false, &live))
            .await;
        let case =
            format!("round {round}: {latency:?}, max_hedges {max_hedges}, None at {refuse_at}");
        assert_eq!(answer, Ok(winner), "{case}");
        assert_eq!(rt.now() - started, Duration::from_millis(at), "{case}");
        assert_eq!(backend.calls(), made, "{case}");
        assert_eq!(copier.asks(), made, "{case}");
        assert_eq!(backend.running(), 0, "{case}");
        assert_eq!(live.load(SeqCst), 0, "{case}");
    }
}

#[test]
fn the_first_attempt_to_answer_wins_whichever_it_is() {
    on_every_runtime!(first_answer_wins);
}

/// A retryable failure while nothing else runs starts the next hedge at once, asking the
/// copier then; a fatal verdict (the hedge's classifier) ends the call with it at once,
/// dropping the attempts still running and asking nothing more.
async fn failures_race_with_hedges<R: Runtime>(rt: Clocked<R>) {
    let retryable = ErrorsWhere(|e: &E| !matches!(e, Error::Inner(Fault::Fatal)));
    let judged = |max_hedges| {
        Hedge::builder()
            .runtime(rt.clone())
            .delay(20 * MS)
            .max_hedges(max_hedges)
            .classify(retryable)
            .build()
            .unwrap()
    };
    let live = Arc::new(AtomicI64::new(0));

    // 1 fails (retryable) at 5: 2 starts at once, slow; 3 at its delay answers Fatal at
    // +10, ending the call though 2 still runs and two more hedges were allowed.
    let backend = Backend::new(&rt, |n| match n {
        1 => (5, Some(Fault::Down)),
        2 => (500, None),
        _ => (10, Some(Fault::Fatal)),
    });
    let copier = Copier::new(&rt, &live);
    let started = rt.now();
    let answer = HedgeLayer::new(judged(4))
        .clone_requests(copier.clone())
        .layer(backend.clone())
        .oneshot(Req::new(0, false, &live))
        .await;
    assert_eq!(answer, Err(Error::Inner(Fault::Fatal)));
    let sent = backend.sent_at(started);
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(
        sent[1],
        5 * MS,
        "the hedge after a lone failure starts at once"
    );
    assert!(sent[2] > sent[1], "{sent:?}");
    assert_eq!(
        rt.now() - started,
        sent[2] + 10 * MS,
        "ended at the fatal verdict"
    );
    assert_eq!(
        copier.ask_times(started),
        sent,
        "asked as each attempt was sent"
    );
    assert_eq!(backend.running(), 0, "the slow hedge was dropped");
    assert_eq!(live.load(SeqCst), 0);

    // A fatal primary: one ask, one attempt, no hedge.
    let backend = Backend::new(&rt, |_| (5, Some(Fault::Fatal)));
    let copier = Copier::new(&rt, &live);
    let answer = HedgeLayer::new(judged(4))
        .clone_requests(copier.clone())
        .layer(backend.clone())
        .oneshot(Req::new(0, false, &live))
        .await;
    assert_eq!(answer, Err(Error::Inner(Fault::Fatal)));
    assert_eq!((backend.calls(), copier.asks()), (1, 1));

    // Every attempt fails at once: 1 + max_hedges back to back, then the last failure;
    // a copier refusing at the third ask ends it there.
    for (refuse, made) in [(None, 5), (Some(3), 3)] {
        let backend = Backend::new(&rt, |_| (1, Some(Fault::Down)));
        let mut copier = Copier::new(&rt, &live);
        if let Some(k) = refuse {
            copier = copier.refuse_at(k);
        }
        let started = rt.now();
        let answer = HedgeLayer::new(judged(4))
            .clone_requests(copier.clone())
            .layer(backend.clone())
            .oneshot(Req::new(0, false, &live))
            .await;
        assert_eq!(answer, Err(DOWN));
        assert_eq!((backend.calls(), copier.asks()), (made, made), "{refuse:?}");
        assert_eq!(rt.now() - started, made * MS, "{refuse:?}");
        assert_eq!(
            backend.generations().last(),
            Some(&if refuse.is_some() { 0 } else { made })
        );
    }
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn retryable_and_fatal_failures_race_with_hedges_and_the_copier() {
    on_every_runtime!(failures_race_with_hedges);
}

/// A success that comes after a retryable failure of another attempt wins; the failure
/// is not the answer.
async fn success_after_a_failure_wins<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    // 1 slow success at 100; 2 (at 20) fails at 25; 3 (at 40) succeeds at 70.
    let backend = Backend::new(&rt, |n| match n {
        1 => (100, None),
        2 => (5, Some(Fault::Down)),
        _ => (30, None),
    });
    let copier = Copier::new(&rt, &live);
    let started = rt.now();
    let answer = HedgeLayer::new(hedge(&rt, 20, 2))
        .clone_requests(copier.clone())
        .layer(backend.clone())
        .oneshot(Req::new(0, false, &live))
        .await;
    assert_eq!(answer, Ok(3));
    assert_eq!(rt.now() - started, 70 * MS);
    assert_eq!(backend.sent_at(started), [Duration::ZERO, 20 * MS, 40 * MS]);
    assert_eq!(copier.asks(), 3);
    assert_eq!(backend.running(), 0);

    // The same with the third attempt sending the original: still the answer.
    let backend = Backend::new(&rt, |n| match n {
        1 => (100, None),
        2 => (5, Some(Fault::Down)),
        _ => (30, None),
    });
    let copier = Copier::new(&rt, &live).refuse_at(3);
    let answer = HedgeLayer::new(hedge(&rt, 20, 5))
        .clone_requests(copier.clone())
        .layer(backend.clone())
        .oneshot(Req::new(0, false, &live))
        .await;
    assert_eq!(answer, Ok(3));
    assert_eq!(backend.generations(), [1, 2, 0]);
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_success_after_another_attempts_failure_is_the_answer() {
    on_every_runtime!(success_after_a_failure_wins);
}

// === 4. hints ===============================================================================

/// A retryable failure's hint holds the next hedge (and its ask) until it ends, capped at
/// 60 s, even while another attempt runs.
async fn a_hint_holds_the_next_hedge<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    // A lone primary fails at 5 asking for 40 ms: the hedge comes at 45, not at 5.
    let backend = Backend::new(&rt, |n| match n {
        1 => (5, Some(Fault::Busy(40))),
        _ => (10, None),
    });
    let copier = Copier::new(&rt, &live);
    let started = rt.now();
    let answer = HedgeLayer::new(hinted(&rt, 20, 3))
        .clone_requests(copier.clone())
        .layer(backend.clone())
        .oneshot(Req::new(0, false, &live))
        .await;
    assert_eq!(answer, Ok(2));
    assert_eq!(backend.sent_at(started), [Duration::ZERO, 45 * MS]);
    assert_eq!(
        copier.ask_times(started),
        [Duration::ZERO, 45 * MS],
        "the ask waits too"
    );
    assert_eq!(rt.now() - started, 55 * MS);

    // Capped at 60 s.
    let backend = Backend::new(&rt, |n| match n {
        1 => (5, Some(Fault::Busy(120_000))),
        _ => (10, None),
    });
    let started = rt.now();
    let answer = HedgeLayer::new(hinted(&rt, 20, 3))
        .clone_requests(Copier::new(&rt, &live))
        .layer(backend.clone())
        .oneshot(Req::new(0, false, &live))
        .await;
    assert_eq!(answer, Ok(2));
    assert_eq!(
        backend.sent_at(started),
        [Duration::ZERO, Duration::from_secs(60) + 5 * MS]
    );

    // While the primary runs (1000 ms), the first hedge (at 20) fails at 25 asking for
    // 100 ms: the second hedge, due at 40, waits until 125 and answers at 135.
    let backend = Backend::new(&rt, |n| match n {
        1 => (1000, None),
        2 => (5, Some(Fault::Busy(100))),
        _ => (10, None),
    });
    let copier = Copier::new(&rt, &live);
    let started = rt.now();
    let answer = HedgeLayer::new(hinted(&rt, 20, 2))
        .clone_requests(copier.clone())
        .layer(backend.clone())
        .oneshot(Req::new(0, false, &live))
        .await;
    assert_eq!(answer, Ok(3));
    assert_eq!(
        backend.sent_at(started),
        [Duration::ZERO, 20 * MS, 125 * MS]
    );
    assert_eq!(copier.asks(), 3);
    assert_eq!(rt.now() - started, 135 * MS);
    assert_eq!(backend.running(), 0);
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_hint_holds_the_next_hedge_and_its_ask() {
    on_every_runtime!(a_hint_holds_the_next_hedge);
}

/// A request sent itself that fails with a hint: no hedge can follow, so the call ends at
/// the failure, without sitting out the hint.
async fn a_hint_after_the_last_copy_is_not_waited<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    for refuse_at in [1, 2] {
        let backend = Backend::new(&rt, |_| (5, Some(Fault::Busy(10_000))));
        let copier = Copier::new(&rt, &live).refuse_at(refuse_at);
        let started = rt.now();
        let answer = HedgeLayer::new(hinted(&rt, 20, 3))
            .clone_requests(copier.clone())
            .layer(backend.clone())
            .oneshot(Req::new(0, false, &live))
            .await;
        assert_eq!(answer, Err(Error::Inner(Fault::Busy(10_000))));
        assert_eq!(backend.calls(), refuse_at);
        // The first fails at 5; a second (the original) waits out the first's hint.
        let ended = if refuse_at == 1 { 5 } else { 10_010 };
        assert_eq!(rt.now() - started, ended * MS, "None at ask {refuse_at}");
    }
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_failure_of_the_request_sent_itself_ends_the_call_without_waiting_its_hint() {
    on_every_runtime!(a_hint_after_the_last_copy_is_not_waited);
}

/// A percentile delay learned as zero (successes that took no virtual time) hedges a call
/// not answered at once at once: every allowed attempt is sent at the call's instant, each
/// asked for then, and a copier refusing its `k`th ask still stops it at `k`.
async fn a_zero_delay_hedges_back_to_back<R: Runtime>(rt: Clocked<R>) {
    let policy = Hedge::builder()
        .runtime(rt.clone())
        .delay(20 * MS)
        .percentile(0.5, 1)
        .max_hedges(4)
        .build()
        .unwrap();
    let live = Arc::new(AtomicI64::new(0));
    let layer = HedgeLayer::new(policy);
    // Warm-up: answered at once, so the estimate is zero.
    let instant = Backend::slow(&rt, 0);
    for _ in 0..3 {
        let answer = layer
            .clone()
            .clone_requests(Copier::new(&rt, &live))
            .layer(instant.clone())
            .oneshot(Req::new(0, false, &live))
            .await;
        assert_eq!(answer.map(|_| ()), Ok(()));
    }
    assert_eq!(layer.hedge().delay(), Duration::ZERO);
    for refuse_at in [0, 1, 3, 5] {
        let mut copier = Copier::new(&rt, &live);
        if refuse_at > 0 {
            copier = copier.refuse_at(refuse_at);
        }
        let backend = Backend::new(&rt, |n| (100 - 10 * u64::from(n), None));
        let started = rt.now();
        let answer = layer
            .clone()
            .clone_requests(copier.clone())
            .layer(backend.clone())
            .oneshot(Req::new(0, false, &live))
            .await;
        let made = if refuse_at == 0 { 5 } else { refuse_at };
        assert_eq!(answer, Ok(made), "None at {refuse_at}");
        assert_eq!(
            backend.sent_at(started),
            vec![Duration::ZERO; made as usize]
        );
        assert_eq!(
            copier.ask_times(started),
            vec![Duration::ZERO; made as usize]
        );
        assert_eq!(rt.now() - started, (100 - 10 * made) * MS);
        assert_eq!(backend.running(), 0);
    }
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_zero_percentile_delay_sends_every_allowed_attempt_at_once_and_no_more() {
    on_every_runtime!(a_zero_delay_hedges_back_to_back);
}

// === 5. the hedge budget =====================================================================

/// Counts the hedge's events.
#[derive(Clone, Default)]
struct Events {
    launched: Arc<AtomicU32>,
    exhausted: Arc<AtomicU32>,
}

fn budgeted<R: Clock>(rt: &R, ratio: f64, max_hedges: u32, events: &Events) -> Hedge<R> {
    let events = events.clone();
    Hedge::builder()
        .runtime(rt.clone())
        .delay(20 * MS)
        .max_hedges(max_hedges)
        .budget_ratio(ratio)
        .on_event(move |event| match event.kind {
            EventKind::HedgeLaunched { .. } => {
                events.launched.fetch_add(1, SeqCst);
            }
            EventKind::BudgetExhausted => {
                events.exhausted.fetch_add(1, SeqCst);
            }
            _ => {}
        })
        .build()
        .unwrap()
}

/// A hedge the budget refuses is not sent, and its copy is not asked for: the copier is
/// asked for the primary and for each hedge launched, nothing more. An empty budget asked
/// again after every attempt failed refuses twice and the call ends with the failure.
async fn a_refused_hedge_asks_nothing<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let events = Events::default();
    // A slow primary: the first hedge is refused, no later one is scheduled.
    let backend = Backend::slow(&rt, 200);
    let copier = Copier::new(&rt, &live);
    let answer = HedgeLayer::new(budgeted(&rt, 0.0, 3, &events))
        .clone_requests(copier.clone())
        .layer(backend.clone())
        .oneshot(Req::new(0, false, &live))
        .await;
    assert_eq!(answer, Ok(1));
    assert_eq!((backend.calls(), copier.asks()), (1, 1));
    assert_eq!(events.launched.load(SeqCst), 0);
    assert_eq!(events.exhausted.load(SeqCst), 1, "one refusal, none later");

    // A failing primary: refused at 20 (its delay), asked again when it fails at 30 and
    // refused again: ends with the failure, asking nothing more.
    let events = Events::default();
    let backend = Backend::new(&rt, |_| (30, Some(Fault::Down)));
    let copier = Copier::new(&rt, &live);
    let started = rt.now();
    let answer = HedgeLayer::new(budgeted(&rt, 0.0, 3, &events))
        .clone_requests(copier.clone())
        .layer(backend.clone())
        .oneshot(Req::new(0, false, &live))
        .await;
    assert_eq!(answer, Err(DOWN));
    assert_eq!((backend.calls(), copier.asks()), (1, 1));
    assert_eq!(rt.now() - started, 30 * MS);
    assert_eq!(events.exhausted.load(SeqCst), 2, "told twice");

    // A budget with some room: over seeded calls, asks = attempts = 1 + hedges launched.
    let events = Events::default();
    let hedge = budgeted(&rt, 0.3, 3, &events);
    let mut rng = Rng::new(7);
    let (mut total_sent, mut total_asks) = (0, 0);
    for _ in 0..30 {
        let lat = 10 * rng.below(10) + 5;
        let backend = Backend::slow(&rt, lat);
        let copier = Copier::new(&rt, &live);
        let answer = HedgeLayer::new(hedge.clone())
            .clone_requests(copier.clone())
            .layer(backend.clone())
            .oneshot(Req::new(0, false, &live))
            .await;
        assert_eq!(answer, Ok(1));
        assert_eq!(backend.calls(), copier.asks());
        total_sent += backend.calls();
        total_asks += copier.asks();
    }
    assert_eq!(total_asks, total_sent);
    assert_eq!(total_sent, 30 + events.launched.load(SeqCst));
    assert!(events.exhausted.load(SeqCst) > 0, "the budget refused some");
    assert!(events.launched.load(SeqCst) > 0, "the budget granted some");
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_hedge_the_budget_refuses_is_never_asked_for() {
    on_every_runtime!(a_refused_hedge_asks_nothing);
}

/// A copier that stops the hedging is not a budget refusal: no `BudgetExhausted`, no
/// `HedgeLaunched` for a hedge not sent.
async fn a_copier_stop_is_not_a_budget_event<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    for ratio in [0.0, 1000.0] {
        let events = Events::default();
        let backend = Backend::new(&rt, |_| (30, Some(Fault::Down)));
        let copier = Copier::new(&rt, &live).refuse_at(1);
        let answer = HedgeLayer::new(budgeted(&rt, ratio, 3, &events))
            .clone_requests(copier.clone())
            .layer(backend.clone())
            .oneshot(Req::new(0, false, &live))
            .await;
        assert_eq!(answer, Err(DOWN));
        assert_eq!(backend.calls(), 1);
        assert_eq!(events.launched.load(SeqCst), 0, "ratio {ratio}");
        assert_eq!(events.exhausted.load(SeqCst), 0, "ratio {ratio}");
    }
    // And the launches a copier allows are each told once.
    let events = Events::default();
    let backend = Backend::slow(&rt, 200);
    let copier = Copier::new(&rt, &live).refuse_at(3);
    let _ = HedgeLayer::new(budgeted(&rt, 1000.0, 5, &events))
        .clone_requests(copier)
        .layer(backend.clone())
        .oneshot(Req::new(0, false, &live))
        .await;
    assert_eq!(backend.calls(), 3);
    assert_eq!(events.launched.load(SeqCst), 2);
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_copier_that_stops_hedging_is_no_launch_and_no_budget_refusal() {
    on_every_runtime!(a_copier_stop_is_not_a_budget_event);
}

// === 6. drops ===============================================================================

/// A response future dropped at a seeded virtual time (before or after its first hedge,
/// mid-race, or after the answer): every copy and the original dropped, no attempt left
/// running, and no attempt launched afterwards.
async fn dropped_at_seeded_times<R: Runtime>(rt: Clocked<R>) {
    let mut rng = Rng::new(0xD809);
    for round in 0..40 {
        let max_hedges = u32::try_from(1 + rng.below(5)).unwrap();
        let refuse_at = u32::try_from(rng.below(u64::from(max_hedges) + 2)).unwrap();
        let latency: Vec<u64> = (0..=max_hedges).map(|_| 10 * rng.below(12) + 3).collect();
        let fails: Vec<bool> = (0..=max_hedges).map(|_| rng.one_in(3)).collect();
        let stop = Duration::from_millis(rng.below(130));
        let live = Arc::new(AtomicI64::new(0));
        let mut copier = Copier::new(&rt, &live);
        if refuse_at > 0 {
            copier = copier.refuse_at(refuse_at);
        }
        let backend = Backend::new(&rt, move |n| {
            let i = n as usize - 1;
            (latency[i], fails[i].then_some(Fault::Down))
        });
        let call = HedgeLayer::new(hedge(&rt, 20, max_hedges))
            .clone_requests(copier.clone())
            .layer(backend.clone())
            .oneshot(Req::new(0, false, &live));
        // The call (pinned in this statement) is dropped at its end, finished or not.
        let finished = matches!(
            select(pin!(call), pin!(rt.sleep(stop))).await,
            Either::Left(_)
        );
        let case = format!("round {round}: stop {stop:?}, finished {finished}");
        assert_eq!(live.load(SeqCst), 0, "{case}");
        assert_eq!(backend.running(), 0, "{case}");
        assert!(copier.asks() >= backend.calls(), "{case}");
        let made = backend.calls();
        rt.sleep(Duration::from_secs(1)).await;
        assert_eq!(
            backend.calls(),
            made,
            "{case}: nothing launched after the end"
        );
        assert_eq!(live.load(SeqCst), 0, "{case}");
    }
}

#[test]
fn every_request_value_is_dropped_when_the_response_future_is_dropped() {
    on_every_runtime!(dropped_at_seeded_times);
}

/// The response future polled only at seeded points, virtual time passing between polls
/// without it: the answer is still the first success (all succeed here, so it is at most the
/// expected winner's), every value is dropped, nothing runs after; dropped unfinished at the
/// last point, likewise.
async fn polled_at_seeded_points<R: Runtime>(rt: Clocked<R>) {
    let mut rng = Rng::new(0x9011);
    for round in 0..30 {
        let max_hedges = u32::try_from(1 + rng.below(4)).unwrap();
        let latency: Vec<u64> = (0..=max_hedges).map(|_| 10 * rng.below(10) + 7).collect();
        let polls = 1 + rng.below(8);
        let live = Arc::new(AtomicI64::new(0));
        let copier = Copier::new(&rt, &live);
        let backend = Backend::new(&rt, move |n| (latency[n as usize - 1], None));
        // Boxed, so that dropping it drops the call (a `pin!` would outlive the drop).
        let mut call = Box::pin(
            HedgeLayer::new(hedge(&rt, 20, max_hedges))
                .clone_requests(copier.clone())
                .layer(backend.clone())
                .oneshot(Req::new(0, false, &live)),
        );
        let mut answer = None;
        for _ in 0..polls {
            if let Poll::Ready(result) = futures_util::poll!(call.as_mut()) {
                answer = Some(result);
                break;
            }
            rt.sleep(Duration::from_millis(rng.below(40))).await;
        }
        drop(call);
        let case = format!("round {round}: {polls} polls, answer {answer:?}");
        if let Some(answer) = answer {
            let n = answer.unwrap();
            assert!(n >= 1 && n <= backend.calls(), "{case}");
        }
        assert_eq!(live.load(SeqCst), 0, "{case}");
        assert_eq!(backend.running(), 0, "{case}");
        assert_eq!(copier.asks(), backend.calls(), "{case}");
    }
}

#[test]
fn a_response_future_polled_only_at_seeded_points_leaves_nothing_behind() {
    on_every_runtime!(polled_at_seeded_points);
}

// === 7. live layers and reloads ==============================================================

fn hedge_config(max_hedges: u32) -> Config {
    let text = format!("[instances.api.hedge]\ndelay = \"20ms\"\nmax_hedges = {max_hedges}\n");
    Config::from_toml(&text).unwrap()
}

/// A live layer with a copier follows reloads between calls: two hedges, none (the copier
/// still asked for the one attempt), two again; writes never hedged throughout.
async fn live_reloads_between_calls<R: Runtime>(rt: Clocked<R>) {
    let registry = Registry::builder(hedge_config(2))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let live = Arc::new(AtomicI64::new(0));
    let copier = Copier::new(&rt, &live).refuse_writes();
    let layer = HedgeLayer::live(registry.hedge("api").unwrap()).clone_requests(copier.clone());
    let backend = Backend::slow(&rt, 100);
    let call = async |write: bool| {
        backend.reset();
        copier.reset();
        let answer = layer
            .layer(backend.clone())
            .oneshot(Req::new(0, write, &live))
            .await;
        assert_eq!(answer, Ok(1));
        (backend.calls(), copier.asks())
    };
    assert_eq!(call(false).await, (3, 3));
    assert_eq!(call(true).await, (1, 1));
    registry.reload(hedge_config(0)).unwrap();
    assert_eq!(layer.hedge().max_hedges(), 0);
    let (sent, asks) = call(false).await;
    assert_eq!(sent, 1, "no hedge after the reload");
    assert_eq!(asks, 1, "asked for the one attempt, the first included");
    registry.reload(hedge_config(2)).unwrap();
    assert_eq!(call(false).await, (3, 3), "hedging again");
    assert_eq!(call(true).await, (1, 1));
    registry.reload(hedge_config(4)).unwrap();
    assert_eq!(call(false).await, (5, 5));
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_live_hedge_layer_with_a_copier_follows_reloads_between_calls() {
    on_every_runtime!(live_reloads_between_calls);
}

/// A reload during a call changes only the calls that start after it: a call started with
/// two hedges keeps them through a reload to none, one started with none keeps none through
/// a reload to two (its copier asked for one attempt at most), and a copier refusing its
/// second ask still stops a call after the reload.
async fn live_reloads_during_calls<R: Runtime>(rt: Clocked<R>) {
    let registry = Registry::builder(hedge_config(2))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let live = Arc::new(AtomicI64::new(0));
    let backend = Backend::slow(&rt, 100);
    let copier = Copier::new(&rt, &live);
    let layer = HedgeLayer::live(registry.hedge("api").unwrap()).clone_requests(copier.clone());

    let call = layer
        .layer(backend.clone())
        .oneshot(Req::new(0, false, &live));
    let reload = async {
        rt.sleep(10 * MS).await;
        registry.reload(hedge_config(0)).unwrap();
    };
    let (answer, ()) = join(call, reload).await;
    assert_eq!(answer, Ok(1));
    assert_eq!(
        (backend.calls(), copier.asks()),
        (3, 3),
        "kept its two hedges"
    );

    backend.reset();
    copier.reset();
    let call = layer
        .layer(backend.clone())
        .oneshot(Req::new(0, false, &live));
    let reload = async {
        rt.sleep(10 * MS).await;
        registry.reload(hedge_config(2)).unwrap();
    };
    let (answer, ()) = join(call, reload).await;
    assert_eq!(answer, Ok(1));
    assert_eq!(backend.calls(), 1, "kept its none");
    assert_eq!(copier.asks(), 1, "asked for its one attempt");

    // Reloads racing each hedge of a call, with a copier that refuses its second ask.
    let stopper = Copier::new(&rt, &live).refuse_at(2);
    let backend = Backend::slow(&rt, 100);
    let call = HedgeLayer::live(registry.hedge("api").unwrap())
        .clone_requests(stopper.clone())
        .layer(backend.clone())
        .oneshot(Req::new(0, false, &live));
    let started = rt.now();
    let reloads = async {
        for (at, n) in [(5, 0), (19, 5), (21, 0), (39, 5)] {
            rt.sleep_until(started + at * MS).await;
            registry.reload(hedge_config(n)).unwrap();
        }
    };
    let (answer, ()) = join(call, reloads).await;
    assert_eq!(answer, Ok(1));
    assert_eq!((backend.calls(), stopper.asks()), (2, 2));
    assert_eq!(backend.generations(), [1, 0]);
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_live_hedge_layer_keeps_each_calls_hedge_through_reloads_during_it() {
    on_every_runtime!(live_reloads_during_calls);
}

/// A live layer judges with its handle's classifier across reloads: a fatal answer ends
/// the call at once, a retryable one starts the next hedge at once, both with a copier.
async fn live_layer_judges_with_the_handles_classifier<R: Runtime>(rt: Clocked<R>) {
    let registry = Registry::builder(hedge_config(3))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let handle = registry
        .hedge("api")
        .unwrap()
        .classify(ErrorsWhere(|e: &E| matches!(e, Error::Inner(Fault::Down))));
    let layer = HedgeLayer::live(handle);
    let live = Arc::new(AtomicI64::new(0));
    for reload in [false, true] {
        if reload {
            registry.reload(hedge_config(2)).unwrap();
        }
        let copier = Copier::new(&rt, &live);
        let fatal = Backend::new(&rt, |_| (5, Some(Fault::Fatal)));
        let answer = layer
            .clone()
            .clone_requests(copier.clone())
            .layer(fatal.clone())
            .oneshot(Req::new(0, false, &live))
            .await;
        assert_eq!(answer, Err(Error::Inner(Fault::Fatal)));
        assert_eq!((fatal.calls(), copier.asks()), (1, 1), "reloaded {reload}");

        let copier = Copier::new(&rt, &live);
        let down = Backend::new(&rt, |_| (5, Some(Fault::Down)));
        let started = rt.now();
        let answer = layer
            .clone()
            .clone_requests(copier.clone())
            .layer(down.clone())
            .oneshot(Req::new(0, false, &live))
            .await;
        assert_eq!(answer, Err(DOWN));
        let attempts = if reload { 3 } else { 4 };
        assert_eq!((down.calls(), copier.asks()), (attempts, attempts));
        assert_eq!(rt.now() - started, attempts * 5 * MS);
    }
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_live_hedge_layer_judges_with_its_handles_classifier() {
    on_every_runtime!(live_layer_judges_with_the_handles_classifier);
}

// === 8. stacks ==============================================================================

fn constant(delay: Duration, attempts: u32) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

/// `RetryLayer` above a `HedgeLayer`, copiers on both: the retry layer asks before each
/// attempt a retry could follow (the last sends its original), the hedge layer before each
/// of its attempts; every failure is the backend's, and every value is dropped.
async fn retry_above_hedge<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let outer = Copier::new(&rt, &live).offset(100);
    let inner = Copier::new(&rt, &live);
    let backend = Backend::new(&rt, |_| (1, Some(Fault::Down)));
    let service = RetryLayer::new(constant(10 * MS, 3))
        .runtime(rt.clone())
        .clone_requests(outer.clone())
        .layer(
            HedgeLayer::new(hedge(&rt, 20, 1))
                .clone_requests(inner.clone())
                .layer(backend.clone()),
        );
    let started = rt.now();
    let answer = service.oneshot(Req::new(0, false, &live)).await;
    assert_eq!(answer, Err(DOWN));
    // Each hedged call: the primary fails at 1, its hedge starts at once and fails at 2.
    assert_eq!(backend.calls(), 6);
    assert_eq!(
        outer.asks(),
        2,
        "the retry layer's last attempt is not asked for"
    );
    assert_eq!(inner.asks(), 6, "the hedge layer asks for every attempt");
    assert_eq!(rt.now() - started, (2 + 10 + 2 + 10 + 2) * MS);
    // The hedge layer was shown the retry layer's copies, then its original.
    assert_eq!(inner.shown(), [101, 101, 102, 102, 0, 0]);
    assert_eq!(live.load(SeqCst), 0);

    // The retry copier refuses: one hedged call (still hedged by the inner copier), no retry.
    let outer = Copier::new(&rt, &live).refuse_at(1);
    let inner = Copier::new(&rt, &live);
    let backend = Backend::new(&rt, |_| (1, Some(Fault::Down)));
    let answer = RetryLayer::new(constant(10 * MS, 3))
        .runtime(rt.clone())
        .clone_requests(outer.clone())
        .layer(
            HedgeLayer::new(hedge(&rt, 20, 1))
                .clone_requests(inner.clone())
                .layer(backend.clone()),
        )
        .oneshot(Req::new(0, false, &live))
        .await;
    assert_eq!(answer, Err(DOWN));
    assert_eq!((backend.calls(), outer.asks(), inner.asks()), (2, 1, 2));

    // The hedge copier refuses: each retry attempt is one send.
    let outer = Copier::new(&rt, &live);
    let inner = Copier::new(&rt, &live).refuse_writes();
    let backend = Backend::new(&rt, |_| (1, Some(Fault::Down)));
    let answer = RetryLayer::new(constant(10 * MS, 3))
        .runtime(rt.clone())
        .clone_requests(outer.clone())
        .layer(
            HedgeLayer::new(hedge(&rt, 20, 3))
                .clone_requests(inner.clone())
                .layer(backend.clone()),
        )
        .oneshot(Req::new(0, true, &live))
        .await;
    assert_eq!(answer, Err(DOWN));
    assert_eq!((backend.calls(), outer.asks(), inner.asks()), (3, 2, 3));
    assert_eq!(backend.running(), 0);
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_retry_layer_above_a_hedge_layer_asks_each_copier_its_own_way() {
    on_every_runtime!(retry_above_hedge);
}

/// `TimeoutLayer` above: the hedged call is cut at the timeout with every attempt and
/// value dropped. Below: each attempt times out on its own, a retryable failure, and the
/// hedged call ends with the last one.
async fn timeouts_above_and_below<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let backend = Backend::slow(&rt, 100);
    let copier = Copier::new(&rt, &live);
    let started = rt.now();
    let answer = TimeoutLayer::new(50 * MS)
        .runtime(rt.clone())
        .layer(
            HedgeLayer::new(hedge(&rt, 20, 5))
                .clone_requests(copier.clone())
                .layer(backend.clone()),
        )
        .oneshot(Req::new(0, false, &live))
        .await;
    assert!(matches!(answer, Err(Error::TimedOut)), "{answer:?}");
    assert_eq!(rt.now() - started, 50 * MS);
    assert_eq!((backend.calls(), copier.asks()), (3, 3));
    assert_eq!(backend.running(), 0);
    assert_eq!(live.load(SeqCst), 0);
    rt.sleep(Duration::from_secs(1)).await;
    assert_eq!(backend.calls(), 3, "no hedge after the timeout");

    let backend = Backend::slow(&rt, 100);
    let copier = Copier::new(&rt, &live).refuse_at(3);
    let started = rt.now();
    let answer = HedgeLayer::new(hedge(&rt, 20, 5))
        .clone_requests(copier.clone())
        .layer(
            TimeoutLayer::new(30 * MS)
                .runtime(rt.clone())
                .layer(backend.clone()),
        )
        .oneshot(Req::new(0, false, &live))
        .await;
    assert!(matches!(answer, Err(Error::TimedOut)), "{answer:?}");
    // Sent at 0, 20, 40 (the original, the last): timed out at 30, 50, 70.
    assert_eq!(backend.sent_at(started), [Duration::ZERO, 20 * MS, 40 * MS]);
    assert_eq!(rt.now() - started, 70 * MS);
    assert_eq!(copier.asks(), 3);
    assert_eq!(backend.running(), 0);
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn timeouts_above_and_below_a_hedge_layer_with_a_copier() {
    on_every_runtime!(timeouts_above_and_below);
}

/// `AdmitLayer` over a bulkhead of 2 below a hedge layer, in every mode: the answer is the
/// primary's, and every slot comes back, whether the call ends or is dropped at a seeded
/// time; every value is dropped.
async fn admit_below_in_every_mode<R: Runtime>(rt: Clocked<R>) {
    let mut rng = Rng::new(0xAD717);
    for mode in [AdmitMode::Reject, AdmitMode::WaitReady, AdmitMode::WaitCall] {
        let bulkhead = Bulkhead::builder(2).runtime(rt.clone()).build().unwrap();
        let live = Arc::new(AtomicI64::new(0));
        let copier = Copier::new(&rt, &live);
        let backend = Backend::slow(&rt, 100);
        let layered = HedgeLayer::new(hedge(&rt, 20, 3))
            .clone_requests(copier.clone())
            .layer(
                AdmitLayer::new(bulkhead.clone(), mode)
                    .runtime(rt.clone())
                    .layer(backend.clone()),
            );
        let answer = layered.clone().oneshot(Req::new(0, false, &live)).await;
        assert_eq!(answer, Ok(1), "{mode:?}");
        assert_eq!(backend.calls(), 2, "{mode:?}: two slots, two sent");
        assert_eq!(bulkhead.available(), 2, "{mode:?}");
        assert_eq!(live.load(SeqCst), 0, "{mode:?}");
        assert_eq!(backend.running(), 0, "{mode:?}");

        for round in 0..8 {
            let stop = Duration::from_millis(rng.below(120));
            let call = layered.clone().oneshot(Req::new(0, false, &live));
            let _ = select(pin!(call), pin!(rt.sleep(stop))).await;
            let case = format!("{mode:?} round {round} stop {stop:?}");
            assert_eq!(bulkhead.available(), 2, "{case}");
            assert_eq!(bulkhead.in_flight(), 0, "{case}");
            assert_eq!(live.load(SeqCst), 0, "{case}");
            assert_eq!(backend.running(), 0, "{case}");
        }
        // Concurrent calls through clones of the service: still conserved.
        let calls = (0..4).map(|_| layered.clone().oneshot(Req::new(0, false, &live)));
        let answers = join_all(calls).await;
        assert!(answers.iter().any(Result::is_ok), "{mode:?}: {answers:?}");
        assert_eq!(bulkhead.available(), 2, "{mode:?}");
        assert_eq!(live.load(SeqCst), 0, "{mode:?}");
    }
}

#[test]
fn an_admit_layer_below_a_hedge_layer_gets_every_slot_back_in_every_mode() {
    on_every_runtime!(admit_below_in_every_mode);
}

/// A hedge layer with a copier inside a `BoxCloneService`: clones share nothing but the
/// copier's counters, concurrent calls each hedge on their own, and every value is dropped.
async fn boxed<R: Runtime>(rt: Clocked<R>) {
    let live = Arc::new(AtomicI64::new(0));
    let copier = Copier::new(&rt, &live).refuse_writes();
    let backend = Backend::slow(&rt, 50);
    let service: BoxCloneService<Req, u32, E> = BoxCloneService::new(
        HedgeLayer::new(hedge(&rt, 20, 2))
            .clone_requests(copier.clone())
            .layer(backend.clone()),
    );
    let started = rt.now();
    let calls = (0..6).map(|i| service.clone().oneshot(Req::new(0, i % 2 == 1, &live)));
    let answers = join_all(calls).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(rt.now() - started, 50 * MS);
    // Three reads sent three times each (0, 20, 40 < 50), three writes once.
    assert_eq!(backend.calls(), 3 * 3 + 3);
    assert_eq!(copier.asks(), 3 * 3 + 3);
    assert_eq!(backend.running(), 0);
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_boxed_hedge_stack_with_a_copier_hedges_each_call_on_its_own() {
    on_every_runtime!(boxed);
}

// === 9. axum ================================================================================

/// An axum router behind a hedge layer whose copier rebuilds GETs with an empty body and
/// lets POSTs (streaming bodies) go once: a slow GET is answered by its hedge, a POST is
/// sent once and echoed whole.
#[tokio::test(start_paused = true)]
async fn an_axum_router_gets_its_gets_hedged_and_its_posts_sent_once() {
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};

    let gets = Arc::new(AtomicU32::new(0));
    let posts = Arc::new(AtomicU32::new(0));
    let (seen_gets, seen_posts) = (Arc::clone(&gets), Arc::clone(&posts));
    let router = axum::Router::new()
        .route(
            "/items",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let n = seen_gets.fetch_add(1, SeqCst) + 1;
                async move {
                    // The first copy is stuck; later ones answer in 5 ms.
                    let took = if n == 1 { 1000 } else { 5 };
                    tokio::time::sleep(Duration::from_millis(took)).await;
                    let key = headers
                        .get("x-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    format!("{n}:{key}")
                }
            }),
        )
        .route(
            "/orders",
            axum::routing::post(move |body: String| {
                seen_posts.fetch_add(1, SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    (StatusCode::CREATED, body)
                }
            }),
        );
    let asks = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&asks);
    let copier = move |request: &Request<Body>| {
        counted.fetch_add(1, SeqCst);
        if request.method() != Method::GET {
            return None;
        }
        let mut copy = Request::builder()
            .method(Method::GET)
            .uri(request.uri().clone());
        for (name, value) in request.headers() {
            copy = copy.header(name, value);
        }
        Some(copy.body(Body::empty()).unwrap())
    };
    let hedge = Hedge::builder()
        .delay(Duration::from_millis(20))
        .max_hedges(2)
        .build()
        .unwrap();
    let app = HedgeLayer::new(hedge).clone_requests(copier).layer(router);

    let started = tokio::time::Instant::now();
    let request = Request::get("/items")
        .header("x-key", "k7")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap();
    assert_eq!(
        &body[..],
        b"2:k7",
        "the hedge's answer, with the header copied"
    );
    assert_eq!(started.elapsed(), Duration::from_millis(25));
    assert_eq!((gets.load(SeqCst), asks.swap(0, SeqCst)), (2, 2));

    let started = tokio::time::Instant::now();
    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>("one "), Ok("order")]);
    let request = Request::post("/orders")
        .body(Body::from_stream(chunks))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap();
    assert_eq!(&body[..], b"one order");
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!((posts.load(SeqCst), asks.load(SeqCst)), (1, 1));
}

// === 10. MakeAttempt::repeatable through Hedge::call =======================================

#[derive(Default)]
struct Made {
    attempts: AtomicU32,
    /// `make_attempt` called while `repeatable` was already false.
    after_false: AtomicU32,
    running: AtomicI64,
}

/// An operation that can be started `k` times, then has given away what it needs.
struct Limited<R> {
    rt: R,
    k: u32,
    made: Arc<Made>,
    script: fn(u32) -> (u64, Option<Fault>),
    stop: Option<Arc<AtomicBool>>,
}

struct Attempting(Arc<Made>);

impl Drop for Attempting {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, SeqCst);
    }
}

impl<R: Clock> MakeAttempt for Limited<R> {
    type Attempt = Pin<Box<dyn Future<Output = Result<u32, Fault>> + Send>>;

    fn make_attempt(&mut self) -> Self::Attempt {
        if !self.repeatable() {
            self.made.after_false.fetch_add(1, SeqCst);
        }
        let n = self.made.attempts.fetch_add(1, SeqCst) + 1;
        self.made.running.fetch_add(1, SeqCst);
        let guard = Attempting(Arc::clone(&self.made));
        let (ms, fault) = (self.script)(n);
        let wait = self.rt.sleep(Duration::from_millis(ms));
        Box::pin(async move {
            wait.await;
            drop(guard);
            fault.map_or(Ok(n), Err)
        })
    }

    fn repeatable(&self) -> bool {
        let stopped = self.stop.as_ref().is_some_and(|s| s.load(SeqCst));
        !stopped && self.made.attempts.load(SeqCst) < self.k
    }
}

fn limited<R: Clock>(rt: &R, k: u32, script: fn(u32) -> (u64, Option<Fault>)) -> Limited<R> {
    Limited {
        rt: rt.clone(),
        k,
        made: Arc::default(),
        script,
        stop: None,
    }
}

/// Whatever `max_hedges`, an operation repeatable `k` times is started `min(k, 1 +
/// max_hedges)` times, never once it said it was not repeatable; slow (hedged by delay) or
/// failing at once (hedged back to back) alike, and the answer is the first success or the
/// last failure.
async fn repeatable_bounds_the_attempts<R: Runtime>(rt: Clocked<R>) {
    for max_hedges in 0..=5u32 {
        let policy = hedge(&rt, 20, max_hedges);
        for k in 1..=4u32 {
            let expected_attempts = k.min(max_hedges + 1);
            let case = format!("max_hedges {max_hedges}, repeatable {k} times");

            // Slow, the last started fastest.
            let op = limited(&rt, k, |n| (1000 - 100 * u64::from(n), None));
            let made = Arc::clone(&op.made);
            let answer = policy.call(Idempotent(op)).await;
            assert_eq!(made.attempts.load(SeqCst), expected_attempts, "{case}");
            assert_eq!(made.after_false.load(SeqCst), 0, "{case}");
            assert_eq!(answer, Ok(expected_attempts), "{case}");
            assert_eq!(made.running.load(SeqCst), 0, "{case}");

            // Failing at once.
            let op = limited(&rt, k, |_| (1, Some(Fault::Down)));
            let made = Arc::clone(&op.made);
            let started = rt.now();
            let answer = policy.call(Idempotent(op)).await;
            assert_eq!(answer, Err(Fault::Down), "{case}");
            assert_eq!(made.attempts.load(SeqCst), expected_attempts, "{case}");
            assert_eq!(made.after_false.load(SeqCst), 0, "{case}");
            assert_eq!(
                rt.now() - started,
                expected_attempts * MS,
                "{case}: no wait after the last"
            );
        }
    }
}

#[test]
fn an_operation_that_stops_being_repeatable_bounds_a_hedges_attempts() {
    on_every_runtime!(repeatable_bounds_the_attempts);
}

/// An operation not repeatable from the start still gets its primary (the call must
/// answer), and nothing else.
async fn never_repeatable_gets_the_primary<R: Runtime>(rt: Clocked<R>) {
    for fails in [false, true] {
        let op = limited(
            &rt,
            0,
            if fails {
                |_| (5, Some(Fault::Down))
            } else {
                |_| (300, None)
            },
        );
        let made = Arc::clone(&op.made);
        let started = rt.now();
        let answer = hedge(&rt, 20, 5).call(Idempotent(op)).await;
        assert_eq!(made.attempts.load(SeqCst), 1, "fails {fails}");
        let (result, took) = if fails {
            (Err(Fault::Down), 5)
        } else {
            (Ok(1), 300)
        };
        assert_eq!(answer, result);
        assert_eq!(rt.now() - started, took * MS);
    }
}

#[test]
fn an_operation_never_repeatable_gets_exactly_its_primary() {
    on_every_runtime!(never_repeatable_gets_the_primary);
}

/// `repeatable` turning false between two hedges (an outside event at 10, 30 or 50 ms, the
/// hedges due at 20, 40, 60...): the docs say the hedge asks "whenever it polls with a hedge
/// pending; once the answer is false it launches nothing more", so the hedges due after the
/// flip are not launched; those launched before still run and may win.
async fn repeatable_turned_false_mid_call<R: Runtime>(rt: Clocked<R>) {
    let mut seen = Vec::new();
    for flip_at in [10, 30, 50] {
        let stop = Arc::new(AtomicBool::new(false));
        // Attempt n takes 200 - 30 n ms: launched at 0, 20, 40, they would answer at 170,
        // 160, 150.
        let mut op = limited(&rt, u32::MAX, |n| (200 - 30 * u64::from(n), None));
        op.stop = Some(Arc::clone(&stop));
        let made = Arc::clone(&op.made);
        let started = rt.now();
        let flip = async {
            rt.sleep(flip_at * MS).await;
            stop.store(true, SeqCst);
        };
        let policy = hedge(&rt, 20, 5);
        let (answer, ()) = join(policy.call(Idempotent(op)), flip).await;
        assert_eq!(made.running.load(SeqCst), 0);
        seen.push((
            flip_at,
            made.attempts.load(SeqCst),
            made.after_false.load(SeqCst),
            answer,
            rt.now() - started,
        ));
    }
    assert_eq!(
        seen,
        [
            (10, 1, 0, Ok(1), 170 * MS),
            (30, 2, 0, Ok(2), 160 * MS),
            (50, 3, 0, Ok(3), 150 * MS),
        ],
        "(flip at, attempts, attempts made while not repeatable, answer, took)"
    );
}

#[test]
fn an_operation_that_stops_being_repeatable_mid_call_launches_nothing_more() {
    on_every_runtime!(repeatable_turned_false_mid_call);
}

/// Not repeatable after one attempt, which fails with a long hint: no hedge can follow, so
/// the call ends at the failure without sitting out the hint.
async fn not_repeatable_failure_is_not_held_by_its_hint<R: Runtime>(rt: Clocked<R>) {
    let hint = |r: Result<&u32, &Fault>| match r {
        Err(Fault::Busy(ms)) => Some(Duration::from_millis(*ms)),
        _ => None,
    };
    let policy = Hedge::builder()
        .runtime(rt.clone())
        .delay(20 * MS)
        .max_hedges(3)
        .classify(Hinted(DefaultClassifier, hint))
        .build()
        .unwrap();
    for k in [1, 2] {
        let op = limited(&rt, k, |_| (5, Some(Fault::Busy(10_000))));
        let made = Arc::clone(&op.made);
        let started = rt.now();
        let answer = policy.call(Idempotent(op)).await;
        assert_eq!(answer, Err(Fault::Busy(10_000)));
        assert_eq!(made.attempts.load(SeqCst), k);
        // The second attempt (k = 2) waits out the first's hint; nothing waits the last's.
        let took = if k == 1 { 5 } else { 10_010 };
        assert_eq!(rt.now() - started, took * MS, "repeatable {k} times");
    }
}

#[test]
fn a_failure_after_which_the_operation_is_not_repeatable_ends_the_call_at_once() {
    on_every_runtime!(not_repeatable_failure_is_not_held_by_its_hint);
}

/// A `HedgeFuture` over a limited operation dropped at seeded times: every attempt it
/// started is dropped with it, and none is started after.
async fn limited_dropped_at_seeded_times<R: Runtime>(rt: Clocked<R>) {
    let mut rng = Rng::new(0x11D);
    for round in 0..30 {
        let k = u32::try_from(1 + rng.below(4)).unwrap();
        let max_hedges = u32::try_from(rng.below(5)).unwrap();
        let stop = Duration::from_millis(rng.below(100));
        let op = limited(&rt, k, |n| (97 - 7 * u64::from(n), None));
        let made = Arc::clone(&op.made);
        let policy = hedge(&rt, 20, max_hedges);
        let _ = select(pin!(policy.call(Idempotent(op))), pin!(rt.sleep(stop))).await;
        let case = format!("round {round}: k {k}, max_hedges {max_hedges}, stop {stop:?}");
        assert_eq!(made.running.load(SeqCst), 0, "{case}");
        assert!(
            made.attempts.load(SeqCst) <= k.min(max_hedges + 1),
            "{case}"
        );
        let attempts = made.attempts.load(SeqCst);
        rt.sleep(Duration::from_secs(1)).await;
        assert_eq!(made.attempts.load(SeqCst), attempts, "{case}");
    }
}

#[test]
fn a_hedge_future_over_a_limited_operation_dropped_at_seeded_times_leaves_nothing() {
    on_every_runtime!(limited_dropped_at_seeded_times);
}

/// Docs (`MakeAttempt::repeatable`): "once the answer is false it launches nothing more and
/// waits for nothing more (a failure's hint included)". An operation that stops being
/// repeatable from outside (at 2 ms) while its primary runs: the primary's failure at 5 ms,
/// with a 10 s hint, ends the call then, not after the hint. (Found by review: the hedge
/// waited out the hint before asking, then launched nothing.)
async fn not_repeatable_from_outside_waits_no_hint<R: Runtime>(rt: Clocked<R>) {
    let hint = |r: Result<&u32, &Fault>| match r {
        Err(Fault::Busy(ms)) => Some(Duration::from_millis(*ms)),
        _ => None,
    };
    let policy = Hedge::builder()
        .runtime(rt.clone())
        .delay(20 * MS)
        .max_hedges(3)
        .classify(Hinted(DefaultClassifier, hint))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut op = limited(&rt, u32::MAX, |_| (5, Some(Fault::Busy(10_000))));
    op.stop = Some(Arc::clone(&stop));
    let made = Arc::clone(&op.made);
    let started = rt.now();
    let flip = async {
        rt.sleep(2 * MS).await;
        stop.store(true, SeqCst);
    };
    let (answer, ()) = join(policy.call(Idempotent(op)), flip).await;
    assert_eq!(answer, Err(Fault::Busy(10_000)));
    assert_eq!(made.attempts.load(SeqCst), 1);
    assert_eq!(
        rt.now() - started,
        5 * MS,
        "ended at the failure, not after its hint"
    );
}

#[test]
fn an_operation_no_longer_repeatable_waits_out_no_hint() {
    on_every_runtime!(not_repeatable_from_outside_waits_no_hint);
}
