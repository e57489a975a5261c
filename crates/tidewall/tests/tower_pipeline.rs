//! A whole pipeline as one tower layer (`PipelineLayer`), static or from a configuration, and
//! a configured hedge in a tower stack (`HedgeLayer::live`): attempts on clones of the
//! service, the stack's one error type, cancellation, and reloads, on every runtime in
//! virtual time.
#![cfg(all(feature = "tower", feature = "toml"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tidewall::breaker::CircuitBreaker;
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::ErrorsWhere;
use tidewall::config::{Config, Registry};
use tidewall::pipeline::Pipeline;
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::testing::Clocked;
use tidewall::tower::{HedgeLayer, PipelineLayer, cause};
use tidewall::{Backoff, Error, Jitter, Rejected};
use tower::{BoxError, ServiceExt as _};
use tower_layer::Layer;
use tower_service::Service;

const MS: Duration = Duration::from_millis(1);

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

/// Only "busy" is worth another attempt.
fn busy_only(error: &Error<&'static str>) -> bool {
    error.inner() == Some(&"busy")
}

/// Answers `n`.
fn ok(n: u32) -> Result<u32, &'static str> {
    Ok(n)
}

/// A service whose `n`th request (from 1) waits `took(n)` ms on `rt` and then answers
/// `answer(n)`; it counts requests and the clones made of it.
#[derive(Clone)]
struct Script<R, T, A> {
    rt: R,
    took: T,
    answer: A,
    calls: Arc<AtomicU32>,
}

impl<R, T, A> Script<R, T, A> {
    fn new(rt: R, took: T, answer: A) -> Self {
        Self {
            rt,
            took,
            answer,
            calls: Arc::new(AtomicU32::new(0)),
        }
    }
}

impl<R, T, A> Service<u32> for Script<R, T, A>
where
    R: Clock,
    T: Fn(u32) -> u64,
    A: Fn(u32) -> Result<u32, &'static str>,
{
    type Response = u32;
    type Error = Error<&'static str>;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<u32, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u32) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let wait = self.rt.sleep(MS * u32::try_from((self.took)(n)).unwrap());
        let answer = (self.answer)(n).map(|v| v + request);
        Box::pin(async move {
            wait.await;
            answer.map_err(Error::Inner)
        })
    }
}

async fn retries_on_clones_and_answers_in_the_stacks_error<R: Runtime>(rt: Clocked<R>) {
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(10 * MS, 3))
        .build()
        .unwrap();
    let flaky = Script::new(
        rt.clone(),
        |_| 5,
        |n| if n < 3 { Err("busy") } else { Ok(n) },
    );
    let calls = Arc::clone(&flaky.calls);
    let service = PipelineLayer::new(pipeline).layer(flaky);
    let start = rt.now();
    assert_eq!(service.clone().oneshot(100).await, Ok(103));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        rt.now() - start,
        35 * MS,
        "3 attempts of 5 ms, 2 pauses of 10 ms"
    );

    // Out of attempts: the last error, as the service gave it (not nested).
    let failing = Script::new(rt.clone(), |_| 1, |_| Err("down"));
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(MS, 2))
        .build()
        .unwrap();
    let answer = PipelineLayer::new(pipeline).layer(failing).oneshot(1).await;
    assert_eq!(answer, Err(Error::Inner("down")));
}

#[test]
fn a_pipeline_layer_retries_on_clones_and_answers_in_the_stacks_error() {
    on_every_runtime!(retries_on_clones_and_answers_in_the_stacks_error);
}

async fn refusals_and_timeouts_come_back_as_the_stacks_error<R: Runtime>(rt: Clocked<R>) {
    // An attempt timeout on the last attempt: `TimedOut`.
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .attempt_timeout(20 * MS)
        .build()
        .unwrap();
    let slow = Script::new(rt.clone(), |_| 50, ok);
    let answer = PipelineLayer::new(pipeline).layer(slow).oneshot(1).await;
    assert_eq!(answer, Err(Error::TimedOut));

    // An open breaker refuses before the service is called.
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .breaker(breaker)
        .build()
        .unwrap();
    let failing = Script::new(rt.clone(), |_| 1, |_| Err("down"));
    let calls = Arc::clone(&failing.calls);
    let service = PipelineLayer::new(pipeline).layer(failing);
    assert_eq!(service.clone().oneshot(1).await, Err(Error::Inner("down")));
    let refused = service.clone().oneshot(1).await;
    assert!(
        matches!(refused, Err(Error::Rejected(Rejected::CircuitOpen { .. }))),
        "{refused:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the refusal called nothing"
    );

    // Behind tower's `BoxError`, the refusal is found with `cause`.
    let bulkhead = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let held = bulkhead.try_acquire().unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap();
    let boxed = tower::service_fn(|x: u32| async move { Ok::<_, BoxError>(x) });
    let err = PipelineLayer::new(pipeline)
        .layer(boxed)
        .oneshot(1)
        .await
        .unwrap_err();
    assert_eq!(cause::<Rejected>(&*err), Some(&Rejected::BulkheadFull));
    drop(held);
}

#[test]
fn a_pipeline_layers_refusals_and_timeouts_are_the_stacks_error() {
    on_every_runtime!(refusals_and_timeouts_come_back_as_the_stacks_error);
}

/// A service that is not ready on its first `poll_ready` of each clone numbered in `fail`
/// (its readiness fails instead), then answers at once.
#[derive(Clone)]
struct Unready {
    readies: Arc<AtomicU32>,
    fail_first: u32,
}

impl Service<u32> for Unready {
    type Response = u32;
    type Error = Error<&'static str>;
    type Future = std::future::Ready<Result<u32, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let n = self.readies.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= self.fail_first {
            Poll::Ready(Err(Error::Inner("not ready")))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, request: u32) -> Self::Future {
        std::future::ready(Ok(request))
    }
}

async fn a_readiness_error_is_the_attempts_error<R: Runtime>(rt: Clocked<R>) {
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(MS, 3))
        .build()
        .unwrap();
    let readies = Arc::new(AtomicU32::new(0));
    let service = Unready {
        readies: Arc::clone(&readies),
        fail_first: 2,
    };
    let mut service = PipelineLayer::new(pipeline).layer(service);
    // Always ready itself: the layer polls nothing of the inner service here.
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .unwrap();
    assert_eq!(readies.load(Ordering::SeqCst), 0);
    assert_eq!(service.call(7).await, Ok(7));
    assert_eq!(
        readies.load(Ordering::SeqCst),
        3,
        "two failed readiness, retried"
    );

    // Out of attempts, the readiness error is the answer.
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(constant(MS, 2))
        .build()
        .unwrap();
    let never = Unready {
        readies: Arc::new(AtomicU32::new(0)),
        fail_first: u32::MAX,
    };
    let answer = PipelineLayer::new(pipeline).layer(never).oneshot(7).await;
    assert_eq!(answer, Err(Error::Inner("not ready")));
}

#[test]
fn a_readiness_error_is_the_attempts_error_and_is_retried() {
    on_every_runtime!(a_readiness_error_is_the_attempts_error);
}

async fn a_dropped_call_gives_everything_back<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(1)
        .runtime(rt.clone())
        .max_queue(0)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead.clone())
        .retry(constant(MS, 3))
        .build()
        .unwrap();
    let stuck = Script::new(rt.clone(), |_| 1_000_000, ok);
    let calls = Arc::clone(&stuck.calls);
    let service = PipelineLayer::new(pipeline).layer(stuck);
    let call = service.clone().oneshot(1);
    let cut = tidewall::time::FutureExt::timeout_on(call, &rt, 30 * MS).await;
    assert!(cut.is_err(), "the attempt was still running");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        bulkhead.in_flight(),
        0,
        "the slot came back with the dropped call"
    );
    // The next call is admitted.
    let quick = Script::new(rt.clone(), |_| 1, ok);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap();
    assert_eq!(
        PipelineLayer::new(pipeline).layer(quick).oneshot(1).await,
        Ok(2)
    );
}

#[test]
fn a_dropped_pipeline_layer_call_gives_its_slot_back() {
    on_every_runtime!(a_dropped_call_gives_everything_back);
}

async fn a_configured_pipeline_layer_follows_reloads<R: Runtime>(rt: Clocked<R>) {
    let registry = Registry::builder(config(
        "[instances.search]\ndeadline = \"1s\"\n[instances.search.retry]\nbackoff = \"constant\"\ninitial_delay = \"10ms\"\nmax_attempts = 2\n",
    ))
    .runtime(rt.clone())
    .build()
    .unwrap();
    // "busy" is retried, "invalid" is not: the handle's classifier, kept across reloads.
    let live = registry
        .pipeline("search")
        .unwrap()
        .classify(ErrorsWhere(busy_only));
    let layer = PipelineLayer::new(live);
    let busy = Script::new(rt.clone(), |_| 1, |_| Err("busy"));
    let calls = Arc::clone(&busy.calls);
    assert_eq!(
        layer.layer(busy.clone()).oneshot(1).await,
        Err(Error::Inner("busy"))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let invalid = Script::new(rt.clone(), |_| 1, |_| Err("invalid"));
    let invalid_calls = Arc::clone(&invalid.calls);
    let _ = layer.layer(invalid).oneshot(1).await;
    assert_eq!(invalid_calls.load(Ordering::SeqCst), 1, "not retried");

    // A call running across a reload keeps its deadline; the next takes the new one.
    let slow = Script::new(rt.clone(), |_| 200, ok);
    let running = {
        let service = layer.layer(slow.clone());
        let rt = rt.clone();
        rt.clone().spawn(async move { service.oneshot(1).await })
    };
    rt.sleep(MS).await;
    registry
        .reload(config(
            "[instances.search]\ndeadline = \"50ms\"\n[instances.search.retry]\nbackoff = \"constant\"\ninitial_delay = \"10ms\"\nmax_attempts = 4\n",
        ))
        .unwrap();
    assert_eq!(
        running.await.unwrap(),
        Ok(2),
        "the 1 s deadline it started with"
    );
    let cut = layer.layer(slow).oneshot(1).await;
    assert_eq!(cut, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    calls.store(0, Ordering::SeqCst);
    let _ = layer.layer(busy).oneshot(1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 4, "the new max_attempts");
}

#[test]
fn a_pipeline_layer_from_a_registry_follows_reloads() {
    on_every_runtime!(a_configured_pipeline_layer_follows_reloads);
}

async fn a_live_hedge_layer_follows_reloads<R: Runtime>(rt: Clocked<R>) {
    let registry = Registry::builder(config(
        "[instances.search.hedge]\ndelay = \"20ms\"\nmax_hedges = 1\n",
    ))
    .runtime(rt.clone())
    .build()
    .unwrap();
    let live = HedgeLayer::live(registry.hedge("search").unwrap());
    let fixed = HedgeLayer::new(registry.hedge("search").unwrap().hedge());
    // The first copy is stuck; any later one answers in 10 ms.
    let stuck_first =
        |rt: &Clocked<R>| Script::new(rt.clone(), |n| if n == 1 { 1_000 } else { 10 }, ok);
    let hedged = |layer: &HedgeLayer<Clocked<R>>| {
        let service = stuck_first(&rt);
        let calls = Arc::clone(&service.calls);
        let rt = rt.clone();
        let call = layer.layer(service).oneshot(0);
        async move {
            let start = rt.now();
            let answer = call.await;
            (answer, calls.load(Ordering::SeqCst), rt.now() - start)
        }
    };
    assert_eq!(hedged(&live).await, (Ok(2), 2, 30 * MS));
    assert_eq!(hedged(&fixed).await, (Ok(2), 2, 30 * MS));

    registry
        .reload(config("[instances.search.hedge]\nmax_hedges = 0\n"))
        .unwrap();
    assert_eq!(live.hedge().max_hedges(), 0);
    assert_eq!(
        hedged(&live).await,
        (Ok(1), 1, 1_000 * MS),
        "no hedge after the reload"
    );
    assert_eq!(
        fixed.hedge().max_hedges(),
        1,
        "HedgeLayer::new keeps its hedge"
    );
    assert_eq!(hedged(&fixed).await, (Ok(2), 2, 30 * MS));
}

#[test]
fn a_live_hedge_layer_follows_reloads_and_a_fixed_one_does_not() {
    on_every_runtime!(a_live_hedge_layer_follows_reloads);
}

#[test]
fn a_pipeline_layers_service_and_future_are_send_and_sync_enough_for_axum() {
    fn send<T: Send>(_: &T) {}
    fn sync<T: Sync>(_: &T) {}
    let pipeline = Pipeline::builder().build().unwrap();
    let mut service = PipelineLayer::new(pipeline).layer(tower::service_fn(|x: u32| async move {
        Ok::<_, Error<()>>(x)
    }));
    send(&service);
    sync(&service);
    let call = service.call(1);
    send(&call);
}
