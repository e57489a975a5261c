//! What fault injection costs a call when it is off: the same calls without a `Chaos` handle
//! and through one that is disabled, in the same run. The target is at most 1 ns a call.
//!
//! Groups (a ready operation, a current-thread tokio runtime; each row times its own loop of
//! calls inside one task, so the harness's per-iteration cost is not in the difference):
//!
//! * `chaos_off_op`: the operation awaited directly, against `chaos.call(op)`.
//! * `chaos_off_pipeline`: a pipeline (retry, 4 attempts, never used → attempt timeout 1 s)
//!   calling the operation, against `pipeline.call(chaos.wrap(op))`.
//! * `chaos_off_tower`: `ready().await` + `call().await` on a service that answers at once,
//!   against the same service under a `ChaosLayer`.
//!
//! Rows: `without_chaos`; `disabled` (a handle with rates set, switched off with
//! `set_enabled(false)`); `idle` (enabled, every rate 0); `without_chaos_repeat` (the first
//! row again, last: how far two runs of the same code differ here); and `armed_rare_faults`
//! (enabled with an error rate of one part per million: every call draws its number, and
//! about one in a million fails at once, which the loop ignores; the cost of chaos when on,
//! for scale).
//!
//! Run: `cargo bench -p tidewall-benches --bench chaos`.

use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, criterion_group, criterion_main, measurement::WallTime};
use tidewall::Backoff;
use tidewall::chaos::{Chaos, ChaosLayer};
use tidewall::pipeline::{Pipeline, RetryStage};
use tokio::runtime::Runtime;
use tower::{BoxError, Layer as _, Service, ServiceExt as _};

static ONE: u64 = 1;

/// A ready operation that, like most, captures something (a reference: 8 bytes).
fn ready_op() -> impl Future<Output = Result<u64, BoxError>> {
    let one: &'static u64 = black_box(&ONE);
    async move { Ok(black_box(*one)) }
}

/// `ready_op` again, for the armed rows: its own type, so that the pipeline's code for it is
/// its own, as the rows before it have theirs (a `Pipeline::call` shared by two rows has two
/// callers, and the compiler then inlines it into neither: that would be measured, not chaos).
fn armed_op() -> impl Future<Output = Result<u64, BoxError>> {
    let one: &'static u64 = black_box(&ONE);
    async move { Ok(black_box(*one)) }
}

/// The handles of the rows that have one: disabled, idle, armed (faults one call in 10^6).
fn handles() -> [(&'static str, Chaos); 3] {
    let disabled = Chaos::builder()
        .seed(1)
        .latency(0.5, Duration::from_millis(10))
        .error(0.1)
        .hang(0.1)
        .alter(0.1)
        .build()
        .unwrap();
    disabled.set_enabled(false);
    let idle = Chaos::builder().seed(1).build().unwrap();
    let armed = Chaos::builder().seed(1).error(0.000_001).build().unwrap();
    [
        ("disabled", disabled),
        ("idle", idle),
        ("armed_rare_faults", armed),
    ]
}

/// Times `iters` calls of `call`, awaited one after the other in one task, once its value is
/// checked. The loop keeps each result without unwrapping it, for the armed row's rare
/// injected errors.
fn timed<F, Fut, E>(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, call: F)
where
    F: Fn() -> Fut + Copy,
    Fut: Future<Output = Result<u64, E>>,
    E: std::fmt::Debug,
{
    assert_eq!(
        rt.block_on(call()).unwrap(),
        1,
        "{name}: the value, or the number means nothing"
    );
    tidewall_benches::awaited_in_a_loop(group, rt, name, call);
}

fn operation(c: &mut criterion::Criterion, rt: &Runtime) {
    let handles = handles();
    let mut group = c.benchmark_group("chaos_off_op");
    timed(&mut group, rt, "without_chaos", ready_op);
    for (name, chaos) in &handles[..2] {
        timed(&mut group, rt, name, || chaos.call(ready_op));
    }
    timed(&mut group, rt, "without_chaos_repeat", ready_op);
    let (name, armed) = &handles[2];
    timed(&mut group, rt, name, || armed.call(armed_op));
    group.finish();
}

type Stack = Pipeline<tidewall::rt::Tokio, (), (), RetryStage>;

fn pipeline() -> Stack {
    Pipeline::builder()
        .retry(
            Backoff::exponential(Duration::from_millis(10))
                .max_attempts(4)
                .build()
                .unwrap(),
        )
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

fn pipelines(c: &mut criterion::Criterion, rt: &Runtime) {
    let handles = handles();
    let pipeline = pipeline();
    let pipeline = &pipeline;
    let plain = || async move { pipeline.call(ready_op).await };
    let mut group = c.benchmark_group("chaos_off_pipeline");
    timed(&mut group, rt, "without_chaos", plain);
    for (name, chaos) in &handles[..2] {
        timed(&mut group, rt, name, || async move {
            pipeline.call(chaos.wrap(ready_op)).await
        });
    }
    timed(&mut group, rt, "without_chaos_repeat", plain);
    let (name, armed) = &handles[2];
    timed(&mut group, rt, name, || async move {
        pipeline.call(armed.wrap(armed_op)).await
    });
    group.finish();
}

/// Answers at once: the inner service of every tower row.
#[derive(Clone, Copy)]
struct Echo;

impl Service<u64> for Echo {
    type Response = u64;
    type Error = BoxError;
    type Future = Ready<Result<u64, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, x: u64) -> Self::Future {
        ready(Ok(x))
    }
}

/// Times `ready().await` + `call().await` on a clone of `service` made before the timed
/// span (the result kept without unwrapping it, as in [`timed`]).
fn per_call<S>(group: &mut BenchmarkGroup<'_, WallTime>, rt: &Runtime, name: &str, service: S)
where
    S: Service<u64, Response = u64, Error = BoxError> + Clone,
{
    let check = service.clone().oneshot(1);
    assert_eq!(rt.block_on(check).unwrap(), 1, "{name}");
    group.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut service = service.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let ready = service.ready().await.unwrap();
                    let _ = black_box(ready.call(black_box(1)).await);
                }
                start.elapsed()
            }
        })
    });
}

fn services(c: &mut criterion::Criterion, rt: &Runtime) {
    let handles = handles();
    let mut group = c.benchmark_group("chaos_off_tower");
    per_call(&mut group, rt, "without_chaos", Echo);
    for (name, chaos) in &handles[..2] {
        per_call(
            &mut group,
            rt,
            name,
            ChaosLayer::new(chaos.clone()).layer(Echo),
        );
    }
    per_call(&mut group, rt, "without_chaos_repeat", Echo);
    let (name, armed) = &handles[2];
    per_call(
        &mut group,
        rt,
        name,
        ChaosLayer::new(armed.clone()).layer(Echo),
    );
    group.finish();
}

fn all(c: &mut criterion::Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    operation(c, &rt);
    pipelines(c, &rt);
    services(c, &rt);
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! { name = benches; config = tidewall_benches::criterion(); targets = all }
}
criterion_main!(group::benches);
