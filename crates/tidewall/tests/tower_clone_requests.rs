//! How the retrying tower layers (`PipelineLayer`, `RetryLayer`, `HedgeLayer`) get each attempt's request
//! (`clone_requests`, `CloneRequest`): a clone only for an attempt a retry could follow,
//! requests that are not `Clone` sent once (`NoClone`), a closure that copies what it can,
//! and an axum `Request<Body>` through a retrying pipeline, on every runtime in virtual time.
#![cfg(all(feature = "tower", feature = "toml"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::task::{Context, Poll};
use std::time::Duration;

use tidewall::breaker::CircuitBreaker;
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::Verdict;
use tidewall::config::{Config, Registry};
use tidewall::hedge::Hedge;
use tidewall::pipeline::Pipeline;
use tidewall::rt::{Clock, Runtime};
use tidewall::telemetry::{Event, EventKind};
use tidewall::testing::Clocked;
use tidewall::tower::{CloneRequest, HedgeLayer, NoClone, PipelineLayer, RetryLayer};
use tidewall::{Backoff, Error, Jitter};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

const MS: Duration = Duration::from_millis(1);

fn constant(attempts: u32) -> Backoff {
    Backoff::constant(10 * MS)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

/// A request that is not `Clone`: an order that can be sent once.
#[derive(Debug)]
struct Order(u32);

/// A request whose clones are counted.
#[derive(Debug)]
struct Counted {
    id: u32,
    clones: Arc<AtomicU32>,
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, SeqCst);
        Self {
            id: self.id,
            clones: Arc::clone(&self.clones),
        }
    }
}

/// Answers its `n`th request (from 1) with `answer(n)` after 1 ms, and counts requests.
#[derive(Clone)]
struct Probe<R, A> {
    rt: R,
    answer: A,
    calls: Arc<AtomicU32>,
}

impl<R, A> Probe<R, A> {
    fn new(rt: R, answer: A) -> Self {
        Self {
            rt,
            answer,
            calls: Arc::new(AtomicU32::new(0)),
        }
    }
}

impl<R, A, Req> Service<Req> for Probe<R, A>
where
    R: Clock,
    A: Fn(u32) -> Result<u32, &'static str>,
    Req: Send + 'static,
{
    type Response = u32;
    type Error = Error<&'static str>;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<u32, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let n = self.calls.fetch_add(1, SeqCst) + 1;
        let wait = self.rt.sleep(MS);
        let answer = (self.answer)(n);
        Box::pin(async move {
            wait.await;
            // Held until the answer: a request is in use for the whole attempt.
            drop(request);
            answer.map_err(Error::Inner)
        })
    }
}

fn down(_: u32) -> Result<u32, &'static str> {
    Err("down")
}

fn fine(n: u32) -> Result<u32, &'static str> {
    Ok(n)
}

/// A request that is not `Clone` gets one attempt through a pipeline that would retry it
/// twice: its error comes back, the breaker counted one call, no pause was taken, and the
/// bulkhead's slot came back.
async fn no_clone_gives_one_attempt<R: Runtime>(rt: Clocked<R>) {
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .build()
        .unwrap();
    let bulkhead = Bulkhead::builder(1).runtime(rt.clone()).build().unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(Duration::from_secs(1))
        .bulkhead(bulkhead.clone())
        .retry(constant(3))
        .breaker(breaker.clone())
        .attempt_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let layer = PipelineLayer::new(pipeline).clone_requests(NoClone);
    let probe = Probe::new(rt.clone(), down);
    let calls = Arc::clone(&probe.calls);
    let started = rt.now();
    let answer = layer.layer(probe.clone()).oneshot(Order(1)).await;
    assert_eq!(answer, Err(Error::Inner("down")));
    assert_eq!(calls.load(SeqCst), 1, "one attempt");
    assert_eq!(rt.now() - started, MS, "no pause after the only attempt");
    assert_eq!(breaker.counts().calls, 1);
    assert_eq!(bulkhead.in_flight(), 0);

    let ok = PipelineLayer::new(
        Pipeline::builder()
            .runtime(rt.clone())
            .retry(constant(3))
            .build()
            .unwrap(),
    )
    .clone_requests(NoClone)
    .layer(Probe::new(rt.clone(), fine))
    .oneshot(Order(2))
    .await;
    assert_eq!(ok, Ok(1));
}

#[test]
fn no_clone_gives_a_request_that_is_not_clone_one_attempt() {
    on_every_runtime!(no_clone_gives_one_attempt);
}

/// The default clones a request only for an attempt that a retry could follow: never in a
/// pipeline without retry or with an empty budget, and `n - 1` times for a call that uses
/// all `n` attempts.
async fn clones_only_what_a_retry_could_need<R: Runtime>(rt: Clocked<R>) {
    // (attempts made, request clones) of one call through `pipeline`.
    macro_rules! one {
        ($pipeline:expr, $answer:expr) => {{
            let probe = Probe::new(rt.clone(), $answer);
            let calls = Arc::clone(&probe.calls);
            let clones = Arc::new(AtomicU32::new(0));
            let request = Counted {
                id: 7,
                clones: Arc::clone(&clones),
            };
            let _ = PipelineLayer::new($pipeline)
                .layer(probe)
                .oneshot(request)
                .await;
            (calls.load(SeqCst), clones.load(SeqCst))
        }};
    }
    let retrying = |attempts| {
        Pipeline::builder()
            .runtime(rt.clone())
            .retry(constant(attempts))
            .build()
            .unwrap()
    };
    assert_eq!(one!(retrying(3), down), (3, 2), "3 attempts, all failing");
    assert_eq!(one!(retrying(5), down), (5, 4), "5 attempts, all failing");
    assert_eq!(
        one!(retrying(3), fine),
        (1, 1),
        "a first attempt that answers"
    );
    assert_eq!(one!(retrying(1), down), (1, 0), "one attempt allowed");
    let no_retry = Pipeline::builder().runtime(rt.clone()).build().unwrap();
    assert_eq!(one!(no_retry, down), (1, 0), "no retry stage");
    // A budget of a tenth of the calls has no retry for a first call.
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.1)
        .min_per_second(0)
        .window(Duration::from_secs(1))
        .build()
        .unwrap();
    let empty = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(3))
        .retry_budget(RetryBudget::new(policy, rt.now()))
        .build()
        .unwrap();
    assert_eq!(one!(empty, down), (1, 0), "a budget with no retry in it");
}

#[test]
fn a_request_is_cloned_only_for_an_attempt_a_retry_could_follow() {
    on_every_runtime!(clones_only_what_a_retry_could_need);
}

/// A request the layer cannot copy.
enum Body {
    Bytes(u32),
    /// A one-shot stream (not `Clone`, as `Body` is not).
    Stream,
}

/// A closure copies what it can: bytes get every attempt, a stream one; and a request it
/// stops copying part-way ends the call at the attempt that sent it.
async fn a_closure_copies_what_it_can<R: Runtime>(rt: Clocked<R>) {
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(5))
        .build()
        .unwrap();
    let layer = PipelineLayer::new(pipeline).clone_requests(|body: &Body| match body {
        Body::Bytes(n) => Some(Body::Bytes(*n)),
        Body::Stream => None,
    });
    let probe = Probe::new(rt.clone(), down);
    let calls = Arc::clone(&probe.calls);
    let bytes = layer.layer(probe.clone()).oneshot(Body::Bytes(1)).await;
    assert_eq!(
        (bytes, calls.swap(0, SeqCst)),
        (Err(Error::Inner("down")), 5)
    );
    let stream = layer.layer(probe.clone()).oneshot(Body::Stream).await;
    assert_eq!(
        (stream, calls.swap(0, SeqCst)),
        (Err(Error::Inner("down")), 1)
    );

    // Copies twice, then no more: three attempts of the five, and the pauses between them.
    let copies = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&copies);
    let twice = move |order: &Order| (seen.fetch_add(1, SeqCst) < 2).then_some(Order(order.0));
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(5))
        .build()
        .unwrap();
    let started = rt.now();
    let answer = PipelineLayer::new(pipeline)
        .clone_requests(twice)
        .layer(probe)
        .oneshot(Order(3))
        .await;
    assert_eq!(answer, Err(Error::Inner("down")));
    assert_eq!((calls.load(SeqCst), copies.load(SeqCst)), (3, 3));
    assert_eq!(
        rt.now() - started,
        3 * MS + 2 * 10 * MS,
        "no pause after the third"
    );
}

#[test]
fn a_closure_copies_the_requests_it_can_and_sends_the_others_once() {
    on_every_runtime!(a_closure_copies_what_it_can);
}

/// `CloneRequest` is the trait a user's own copier implements.
#[derive(Clone)]
struct EvenOnly;

impl CloneRequest<u32> for EvenOnly {
    fn clone_request(&self, request: &u32) -> Option<u32> {
        request.is_multiple_of(2).then_some(*request)
    }
}

/// A configured pipeline keeps to `NoClone` across a reload that gives it retries, and a
/// user's own `CloneRequest` decides per request.
async fn a_live_pipeline_keeps_the_layers_copier<R: Runtime>(rt: Clocked<R>) {
    let registry = Registry::builder(Config::from_toml("[instances.api]\n").unwrap())
        .runtime(rt.clone())
        .build()
        .unwrap();
    let once = PipelineLayer::new(registry.pipeline("api").unwrap()).clone_requests(NoClone);
    let even = PipelineLayer::new(registry.pipeline("api").unwrap()).clone_requests(EvenOnly);
    let probe = Probe::new(rt.clone(), down);
    let calls = Arc::clone(&probe.calls);
    let text =
        "[instances.api.retry]\nmax_attempts = 3\ninitial_delay = \"10ms\"\njitter = \"none\"\n";
    registry.reload(Config::from_toml(text).unwrap()).unwrap();
    let answer = once.layer(probe.clone()).oneshot(Order(1)).await;
    assert_eq!(
        (answer, calls.swap(0, SeqCst)),
        (Err(Error::Inner("down")), 1)
    );
    let answer = even.layer(probe.clone()).oneshot(2).await;
    assert_eq!(
        (answer, calls.swap(0, SeqCst)),
        (Err(Error::Inner("down")), 3)
    );
    let answer = even.layer(probe).oneshot(3).await;
    assert_eq!(
        (answer, calls.swap(0, SeqCst)),
        (Err(Error::Inner("down")), 1)
    );
}

#[test]
fn a_live_pipeline_layer_keeps_its_copier_across_reloads() {
    on_every_runtime!(a_live_pipeline_keeps_the_layers_copier);
}

/// An axum `Request<Body>` (not `Clone`) goes through a retrying pipeline with `NoClone`:
/// the router answers once, and the stack's error is the router's own, typed.
#[tokio::test(start_paused = true)]
async fn an_axum_request_goes_through_a_pipeline_once() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};

    let served = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&served);
    let router = axum::Router::new().route(
        "/orders",
        axum::routing::post(move |body: String| {
            seen.fetch_add(1, SeqCst);
            async move { (StatusCode::CREATED, body) }
        }),
    );
    let router =
        ServiceExt::<Request<Body>>::map_err(router, Error::<std::convert::Infallible>::Inner);
    let pipeline = Pipeline::builder()
        .deadline(Duration::from_secs(1))
        .retry(constant(3))
        .attempt_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let service = PipelineLayer::new(pipeline)
        .clone_requests(NoClone)
        .layer(router);
    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>("one "), Ok("order")]);
    let request = Request::post("/orders")
        .body(Body::from_stream(chunks))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body = axum::body::to_bytes(response.into_body(), 1024)
        .await
        .unwrap();
    assert_eq!(&body[..], b"one order");
    assert_eq!(served.load(SeqCst), 1);
}

/// `RetryLayer::clone_requests`: a closure's copies are retried, a request it cannot copy is
/// sent once with no pause after it, and one it stops copying part-way ends the call at the
/// attempt that sent it. `NoClone` sends a request that is not `Clone` once.
async fn a_retry_layer_copies_what_it_can<R: Runtime>(rt: Clocked<R>) {
    let layer = RetryLayer::new(constant(5))
        .runtime(rt.clone())
        .clone_requests(|body: &Body| match body {
            Body::Bytes(n) => Some(Body::Bytes(*n)),
            Body::Stream => None,
        });
    let probe = Probe::new(rt.clone(), down);
    let calls = Arc::clone(&probe.calls);
    let bytes = layer.layer(probe.clone()).oneshot(Body::Bytes(1)).await;
    assert_eq!(
        (bytes, calls.swap(0, SeqCst)),
        (Err(Error::Inner("down")), 5)
    );
    let started = rt.now();
    let stream = layer.layer(probe.clone()).oneshot(Body::Stream).await;
    assert_eq!(
        (stream, calls.swap(0, SeqCst)),
        (Err(Error::Inner("down")), 1)
    );
    assert_eq!(rt.now() - started, MS, "no pause after the only attempt");

    let copies = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&copies);
    let twice = move |order: &Order| (seen.fetch_add(1, SeqCst) < 2).then_some(Order(order.0));
    let started = rt.now();
    let answer = RetryLayer::new(constant(5))
        .runtime(rt.clone())
        .clone_requests(twice)
        .layer(probe.clone())
        .oneshot(Order(3))
        .await;
    assert_eq!(answer, Err(Error::Inner("down")));
    assert_eq!((calls.swap(0, SeqCst), copies.load(SeqCst)), (3, 3));
    assert_eq!(
        rt.now() - started,
        3 * MS + 2 * 10 * MS,
        "no pause after the third"
    );

    let once = RetryLayer::new(constant(5))
        .runtime(rt.clone())
        .clone_requests(NoClone)
        .layer(probe)
        .oneshot(Order(4))
        .await;
    assert_eq!((once, calls.load(SeqCst)), (Err(Error::Inner("down")), 1));
}

#[test]
fn a_retry_layer_copies_the_requests_it_can_and_sends_the_others_once() {
    on_every_runtime!(a_retry_layer_copies_what_it_can);
}

/// `RetryLayer` asks its copier only for an attempt a retry could follow: never with one
/// attempt allowed, and `n - 1` times for `n` attempts; an answer ends the asks.
async fn a_retry_layer_asks_only_when_a_retry_could_follow<R: Runtime>(rt: Clocked<R>) {
    for (attempts, answer, sent, asked) in [
        (1, down as fn(u32) -> Result<u32, &'static str>, 1, 0),
        (3, down, 3, 2),
        (3, fine, 1, 1),
    ] {
        let asks = Arc::new(AtomicU32::new(0));
        let seen = Arc::clone(&asks);
        let copier = move |order: &Order| {
            seen.fetch_add(1, SeqCst);
            Some(Order(order.0))
        };
        let probe = Probe::new(rt.clone(), answer);
        let calls = Arc::clone(&probe.calls);
        let _ = RetryLayer::new(constant(attempts))
            .runtime(rt.clone())
            .clone_requests(copier)
            .layer(probe)
            .oneshot(Order(1))
            .await;
        assert_eq!(
            (calls.load(SeqCst), asks.load(SeqCst)),
            (sent, asked),
            "{attempts} attempts"
        );
    }
}

#[test]
fn a_retry_layer_asks_for_a_copy_only_when_a_retry_could_follow() {
    on_every_runtime!(a_retry_layer_asks_only_when_a_retry_could_follow);
}

/// A request whose live values are counted: every copy and the original are dropped by the
/// end of a call, however it ends.
struct Live {
    read: bool,
    live: Arc<AtomicU32>,
}

impl Live {
    fn new(read: bool, live: &Arc<AtomicU32>) -> Self {
        live.fetch_add(1, SeqCst);
        Self {
            read,
            live: Arc::clone(live),
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.live.fetch_sub(1, SeqCst);
    }
}

/// Answers every request after 80 ms, counting them.
fn slow<R: Clock>(
    rt: &R,
    sent: &Arc<AtomicU32>,
) -> impl Service<Live, Response = bool, Error = Error<&'static str>, Future: Send>
+ Clone
+ Send
+ 'static {
    let rt = rt.clone();
    let sent = Arc::clone(sent);
    tower::service_fn(move |request: Live| {
        sent.fetch_add(1, SeqCst);
        let wait = rt.sleep(80 * MS);
        async move {
            wait.await;
            Ok(request.read)
        }
    })
}

/// `HedgeLayer::clone_requests`: a closure that copies reads hedges them (two sent, the
/// hedge's answer first), a write it will not copy is sent once and never hedged, and every
/// request value is dropped by the end of the call.
async fn a_hedge_layer_hedges_only_what_it_can_copy<R: Runtime>(rt: Clocked<R>) {
    let hedge = Hedge::builder()
        .runtime(rt.clone())
        .delay(50 * MS)
        .max_hedges(3)
        .build()
        .unwrap();
    let live = Arc::new(AtomicU32::new(0));
    let copies = Arc::clone(&live);
    let layer = HedgeLayer::new(hedge)
        .clone_requests(move |request: &Live| request.read.then(|| Live::new(true, &copies)));
    let sent = Arc::new(AtomicU32::new(0));
    let started = rt.now();
    let read = layer
        .layer(slow(&rt, &sent))
        .oneshot(Live::new(true, &live))
        .await;
    assert_eq!(read, Ok(true));
    assert_eq!(
        rt.now() - started,
        80 * MS,
        "the first attempt answered first"
    );
    assert_eq!(sent.swap(0, SeqCst), 2, "hedged once at 50 ms");
    let started = rt.now();
    let write = layer
        .layer(slow(&rt, &sent))
        .oneshot(Live::new(false, &live))
        .await;
    assert_eq!(write, Ok(false));
    assert_eq!(rt.now() - started, 80 * MS);
    assert_eq!(sent.swap(0, SeqCst), 1, "a write is never hedged");
    assert_eq!(live.load(SeqCst), 0, "every copy and original dropped");
}

#[test]
fn a_hedge_layer_hedges_only_the_requests_it_can_copy() {
    on_every_runtime!(a_hedge_layer_hedges_only_what_it_can_copy);
}

/// A copier that copies once: the first attempt sends the copy, the first hedge the request
/// itself, and no later hedge is launched though three are allowed. `NoClone` never hedges.
async fn a_hedge_stops_when_the_request_is_given_away<R: Runtime>(rt: Clocked<R>) {
    let hedge = || {
        Hedge::builder()
            .runtime(rt.clone())
            .delay(20 * MS)
            .max_hedges(3)
            .build()
            .unwrap()
    };
    let live = Arc::new(AtomicU32::new(0));
    let asks = Arc::new(AtomicU32::new(0));
    let (copies, seen) = (Arc::clone(&live), Arc::clone(&asks));
    let once = move |_: &Live| (seen.fetch_add(1, SeqCst) == 0).then(|| Live::new(true, &copies));
    let sent = Arc::new(AtomicU32::new(0));
    let answer = HedgeLayer::new(hedge())
        .clone_requests(once)
        .layer(slow(&rt, &sent))
        .oneshot(Live::new(true, &live))
        .await;
    assert_eq!(answer, Ok(true));
    assert_eq!((sent.swap(0, SeqCst), asks.load(SeqCst)), (2, 2));
    let answer = HedgeLayer::new(hedge())
        .clone_requests(NoClone)
        .layer(slow(&rt, &sent))
        .oneshot(Live::new(true, &live))
        .await;
    assert_eq!((answer, sent.load(SeqCst)), (Ok(true), 1));
    assert_eq!(live.load(SeqCst), 0);
}

#[test]
fn a_hedge_launches_nothing_once_its_request_is_given_away() {
    on_every_runtime!(a_hedge_stops_when_the_request_is_given_away);
}

/// Retryable below 500 is an answer; 500 and up, and every error, are retried.
fn retry_5xx(result: Result<&u32, &Error<&'static str>>) -> Verdict {
    match result {
        Ok(status) if *status < 500 => Verdict::Success,
        _ => Verdict::RetryableFailure,
    }
}

/// 503, an error, 503, an error: what each attempt answers.
fn flapping(n: u32) -> Result<u32, &'static str> {
    if n % 2 == 1 { Ok(503) } else { Err("down") }
}

/// A copier's `None` ends the call with that attempt's result, but for the deadline's rule:
/// when the deadline leaves no time for a retry either, the 503 an earlier attempt got comes
/// back in place of the last attempt's error. The same in both retrying layers. (Attempts
/// take 1 ms, pauses 10 ms: the fourth ends at 34 ms, and a fifth could start at 44 ms.)
async fn a_refusal_meets_the_deadline_rule_in_both_layers<R: Runtime>(rt: Clocked<R>) {
    let refusing_at_4 = || {
        let asks = Arc::new(AtomicU32::new(0));
        move |order: &Order| (asks.fetch_add(1, SeqCst) < 3).then_some(Order(order.0))
    };
    for (deadline, answer) in [
        (Duration::from_millis(36), Ok(503)),
        (Duration::from_secs(1), Err(Error::Inner("down"))),
    ] {
        let probe = Probe::new(rt.clone(), flapping);
        let retried = RetryLayer::new(constant(9))
            .runtime(rt.clone())
            .classify(retry_5xx)
            .deadline(deadline)
            .clone_requests(refusing_at_4())
            .layer(probe.clone())
            .oneshot(Order(1))
            .await;
        assert_eq!(retried, answer, "RetryLayer, {deadline:?}");
        let pipeline = Pipeline::builder()
            .runtime(rt.clone())
            .deadline(deadline)
            .retry(constant(9))
            .classify(retry_5xx)
            .build()
            .unwrap();
        let piped = PipelineLayer::new(pipeline)
            .clone_requests(refusing_at_4())
            .layer(probe.clone())
            .oneshot(Order(1))
            .await;
        assert_eq!(piped, answer, "PipelineLayer, {deadline:?}");
        assert_eq!(probe.calls.load(SeqCst), 8, "four attempts each");
    }
}

#[test]
fn a_copier_refusal_meets_the_deadline_rule_in_both_retrying_layers() {
    on_every_runtime!(a_refusal_meets_the_deadline_rule_in_both_layers);
}

/// A pipeline layer whose last attempt sends the request itself because the budget has no
/// retry reports the spent budget as `Pipeline::call` does.
async fn the_layer_reports_a_spent_budget_as_the_pipeline_does<R: Runtime>(rt: Clocked<R>) {
    let spent = Arc::new(AtomicU32::new(0));
    let pipeline = || {
        let policy = RetryBudgetPolicy::builder()
            .ratio(0.1)
            .min_per_second(0)
            .window(Duration::from_secs(1))
            .build()
            .unwrap();
        let seen = Arc::clone(&spent);
        Pipeline::builder()
            .runtime(rt.clone())
            .retry(constant(3))
            .retry_budget(RetryBudget::new(policy, rt.now()))
            .on_event(move |event: &Event<'_>| {
                if matches!(event.kind, EventKind::BudgetExhausted) {
                    seen.fetch_add(1, SeqCst);
                }
            })
            .build()
            .unwrap()
    };
    let direct = pipeline().call(|| async { Err::<u32, _>("down") }).await;
    assert_eq!(direct, Err(Error::Inner("down")));
    assert_eq!(spent.swap(0, SeqCst), 1, "Pipeline::call");
    let layered = PipelineLayer::new(pipeline())
        .layer(Probe::new(rt.clone(), down))
        .oneshot(Counted {
            id: 1,
            clones: Arc::new(AtomicU32::new(0)),
        })
        .await;
    assert_eq!(layered, Err(Error::Inner("down")));
    assert_eq!(spent.load(SeqCst), 1, "PipelineLayer");
}

#[test]
fn a_pipeline_layer_reports_a_spent_budget_as_the_pipeline_does() {
    on_every_runtime!(the_layer_reports_a_spent_budget_as_the_pipeline_does);
}
