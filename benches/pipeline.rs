//! The Tidewall pipeline on the happy path (every stage admits, the first attempt succeeds)
//! against tower doing the same stages, with two operations:
//!
//! * `pipeline_ready_op`: the operation is ready on its first poll. Tidewall then reads no
//!   clock and arms no timer (it arms the attempt timeout only for a pending operation); tower's
//!   `Timeout` builds a tokio `Sleep` per call (a clock read) and polls it only if the response
//!   is pending, so it arms no timer either.
//! * `pipeline_pending_once`: the operation is pending until the task has been back to the
//!   scheduler once (one yield: a tokio `oneshot` completed by the scheduler's deferred
//!   wake-up, see `pending_once_op`; every variant pays its two allocations). Both sides now
//!   arm their attempt timers.
//!
//! Variants (each group):
//!
//! * `tidewall_same_stages_as_tower`: deadline 5 s → rate limiter (10^9/s, never denies,
//!   default clock) → bulkhead 64 → retry (exponential from 10 ms, 4 attempts, never used) →
//!   attempt timeout 1 s. No breaker: tower has none.
//! * `tower_same_stages`: tower 0.5 `Timeout(5 s)` → `RateLimit(10^9 per 1 s)` →
//!   `ConcurrencyLimit(64)` → `Retry` (a policy retrying errors after an exponential sleep
//!   from 10 ms, 4 attempts, never used) → `Timeout(1 s)` around a `service_fn`, called as
//!   `ready().await?.call(())`. Not identical semantics: tower's rate limit is a fixed window
//!   (Tidewall's is GCRA) and its outer `Timeout` does not bound waits in `poll_ready`.
//! * `tidewall_5_policies`: the same stages plus a breaker (defaults) between the retry and
//!   the attempt timeout. Tower has no breaker, so it has no tower peer. (Every limiter here
//!   is on default settings: the tokio clock, real time, so its decisions read the CPU
//!   timestamp counter.)
//! * `tidewall_pipeline_layer_same_stages`: `tidewall_same_stages_as_tower`'s pipeline as one
//!   tower layer (`tidewall::tower::PipelineLayer`) over the same `service_fn`, called as tower
//!   is: the tower front of the pipeline against tower's own stack, both `Service`s. It boxes
//!   each call's future (one allocation) and clones the service and the request (both free
//!   here: a `Copy` closure and `()`).
//! * `tower_2_layers` (ready operation only): `ConcurrencyLimit(64)` + `Timeout(1 s)`, the
//!   smallest common stack, for scale.
//! * `bare_future`: the operation awaited directly, the floor.
//!
//! All run with `to_async` on a current-thread tokio runtime with timers enabled, and every
//! variant's value is checked before timing.
//!
//! Run: `cargo bench -p tidewall-benches --bench pipeline`.

use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main};
use tidewall::Backoff;
use tidewall::breaker::CircuitBreaker;
use tidewall::bulkhead::Bulkhead;
use tidewall::pipeline::{Pipeline, PipelineBuilder, RetryStage};
use tidewall::rate::RateLimiter;
use tidewall::tower::PipelineLayer;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};

const PER_SECOND: u32 = 1_000_000_000;
const DEADLINE: Duration = Duration::from_secs(5);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const ATTEMPTS: u32 = 4;
const BULKHEAD: usize = 64;

async fn ready_op() -> Result<u64, BoxError> {
    Ok(black_box(1))
}

/// Completes `pending_once_op` when the scheduler delivers its deferred wake-up.
struct SendOnWake(Mutex<Option<oneshot::Sender<()>>>);

impl Wake for SendOnWake {
    fn wake(self: Arc<Self>) {
        if let Some(done) = self.0.lock().unwrap().take() {
            let _ = done.send(());
        }
    }
}

/// Pending until the task has gone back to the scheduler once. `yield_now` alone would not
/// do: it is ready on its second poll whether or not it was woken, so a caller that re-polls
/// at once (Tidewall's deadline stage does, before arming its timer) would never return to
/// the scheduler. Here the scheduler's deferred wake-up (which `yield_now` registers, handed
/// a waker of ours) is what completes the operation.
async fn pending_once_op() -> Result<u64, BoxError> {
    let (done, woken) = oneshot::channel();
    let waker = Waker::from(Arc::new(SendOnWake(Mutex::new(Some(done)))));
    let mut defer = pin!(tokio::task::yield_now());
    assert!(
        defer
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending()
    );
    woken.await.unwrap();
    Ok(black_box(1))
}

type Stages = PipelineBuilder<tidewall::rt::Tokio, RateLimiter, Bulkhead, RetryStage>;

/// Deadline → rate limiter (never denies) → bulkhead → retry, the stages tower also has.
fn common_stages() -> Stages {
    let limiter = RateLimiter::builder(PER_SECOND, Duration::from_secs(1)).burst(PER_SECOND);
    Pipeline::builder()
        .deadline(DEADLINE)
        .rate_limit(limiter.build().unwrap())
        .bulkhead(Bulkhead::builder(BULKHEAD).build().unwrap())
        .retry(
            Backoff::exponential(FIRST_BACKOFF)
                .max_attempts(ATTEMPTS)
                .build()
                .unwrap(),
        )
}

type SameStages = Pipeline<tidewall::rt::Tokio, RateLimiter, Bulkhead, RetryStage>;
type FivePolicies =
    Pipeline<tidewall::rt::Tokio, RateLimiter, Bulkhead, RetryStage, CircuitBreaker>;

fn same_stages_as_tower() -> SameStages {
    common_stages()
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .build()
        .unwrap()
}

fn five_policies() -> FivePolicies {
    common_stages()
        .breaker(CircuitBreaker::builder().build().unwrap())
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .build()
        .unwrap()
}

/// Retries errors after an exponential sleep from `FIRST_BACKOFF`, `ATTEMPTS` attempts in all:
/// the tower counterpart of Tidewall's retry stage (never used on the happy path).
#[derive(Clone)]
struct RetryErrors {
    attempts: u32,
}

impl tower::retry::Policy<(), u64, BoxError> for RetryErrors {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _request: &mut (),
        result: &mut Result<u64, BoxError>,
    ) -> Option<Self::Future> {
        if result.is_ok() || self.attempts + 1 >= ATTEMPTS {
            return None;
        }
        let delay = FIRST_BACKOFF * 2u32.pow(self.attempts);
        self.attempts += 1;
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, _request: &()) -> Option<()> {
        Some(())
    }
}

/// Tower's counterpart of `same_stages_as_tower`, outermost first. Builds a `RateLimit`,
/// which needs a runtime context: call it inside the runtime.
fn tower_same_stages<F, Fut>(op: F) -> impl Service<(), Response = u64, Error = BoxError>
where
    F: Fn() -> Fut + Copy,
    Fut: Future<Output = Result<u64, BoxError>>,
{
    ServiceBuilder::new()
        .timeout(DEADLINE)
        .rate_limit(u64::from(PER_SECOND), Duration::from_secs(1))
        .concurrency_limit(BULKHEAD)
        .retry(RetryErrors { attempts: 0 })
        .timeout(ATTEMPT_TIMEOUT)
        .service(tower::service_fn(move |()| op()))
}

fn tower_2_layers<F, Fut>(op: F) -> impl Service<(), Response = u64, Error = BoxError>
where
    F: Fn() -> Fut + Copy,
    Fut: Future<Output = Result<u64, BoxError>>,
{
    ServiceBuilder::new()
        .concurrency_limit(BULKHEAD)
        .timeout(ATTEMPT_TIMEOUT)
        .service(tower::service_fn(move |()| op()))
}

async fn call_tower<S: Service<(), Response = u64, Error = BoxError>>(svc: &mut S) -> u64 {
    svc.ready().await.unwrap().call(()).await.unwrap()
}

fn pipelines(c: &mut criterion::Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    bench_group(c, &rt, "pipeline_ready_op", ready_op);
    bench_group(c, &rt, "pipeline_pending_once", pending_once_op);
}

/// One group: every variant calls `op` (a plain `fn` item, so no variant pays for boxing it).
fn bench_group<F, Fut>(c: &mut criterion::Criterion, rt: &Runtime, group_name: &str, op: F)
where
    F: Fn() -> Fut + Copy + Send + 'static,
    Fut: Future<Output = Result<u64, BoxError>> + Send + 'static,
{
    let same = same_stages_as_tower();
    let five = five_policies();
    let (same, five) = (&same, &five);
    // Each variant must produce the value, or its number means nothing.
    assert_eq!(rt.block_on(op()).unwrap(), 1);
    assert_eq!(rt.block_on(same.call(op)).unwrap(), 1);
    assert_eq!(rt.block_on(five.call(op)).unwrap(), 1);
    assert_eq!(
        rt.block_on(async { call_tower(&mut tower_same_stages(op)).await }),
        1
    );
    assert_eq!(
        rt.block_on(async { call_tower(&mut tower_2_layers(op)).await }),
        1
    );
    let layered =
        || PipelineLayer::new(same_stages_as_tower()).layer(tower::service_fn(move |()| op()));
    assert_eq!(rt.block_on(async { call_tower(&mut layered()).await }), 1);

    let mut group = c.benchmark_group(group_name);
    group.bench_function("bare_future", |b| b.to_async(rt).iter(op));
    group.bench_function("tidewall_same_stages_as_tower", |b| {
        b.to_async(rt).iter(move || same.call(op))
    });
    // `call` needs `&mut` service, which an `iter` future cannot borrow from its closure, so
    // tower times its own loop over one service. Built once, as Tidewall's pipeline is, and
    // lent to each sample: both sides run every sample on state the earlier ones warmed.
    // Inside the runtime: tower's rate limit and timeout arm tokio timers as they are built.
    let tower_same = Cell::new(Some(rt.block_on(async { tower_same_stages(op) })));
    let tower_same = &tower_same;
    group.bench_function("tower_same_stages", |b| {
        b.to_async(rt).iter_custom(move |iters| async move {
            let mut svc = tower_same.take().expect("one sample at a time");
            let start = Instant::now();
            for _ in 0..iters {
                black_box(call_tower(&mut svc).await);
            }
            let elapsed = start.elapsed();
            tower_same.set(Some(svc));
            elapsed
        })
    });
    // Timed as tower's stack is, for the same reason (`call` takes `&mut`).
    let layer = Cell::new(Some(layered()));
    let layer = &layer;
    group.bench_function("tidewall_pipeline_layer_same_stages", |b| {
        b.to_async(rt).iter_custom(move |iters| async move {
            let mut svc = layer.take().expect("one sample at a time");
            let start = Instant::now();
            for _ in 0..iters {
                black_box(call_tower(&mut svc).await);
            }
            let elapsed = start.elapsed();
            layer.set(Some(svc));
            elapsed
        })
    });
    group.bench_function("tidewall_5_policies", |b| {
        b.to_async(rt).iter(move || five.call(op))
    });
    if group_name == "pipeline_ready_op" {
        let tower_two = Cell::new(Some(rt.block_on(async { tower_2_layers(op) })));
        let tower_two = &tower_two;
        group.bench_function("tower_2_layers", |b| {
            b.to_async(rt).iter_custom(move |iters| async move {
                let mut svc = tower_two.take().expect("one sample at a time");
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(call_tower(&mut svc).await);
                }
                let elapsed = start.elapsed();
                tower_two.set(Some(svc));
                elapsed
            })
        });
    }
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! { name = benches; config = tidewall_benches::criterion(); targets = pipelines }
}
criterion_main!(group::benches);
