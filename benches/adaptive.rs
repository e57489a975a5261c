//! What an adaptive limiter costs a call against a bulkhead, in the same run: take a slot,
//! end the call, give the slot back, uncontended with free slots (limit 64).
//!
//! * `bulkhead_owned`: `Bulkhead::try_acquire_owned` and drop (the permit the adaptive
//!   limiter holds);
//! * `aimd`, `vegas`, `gradient2`: `AdaptiveLimiter::try_acquire` then `success()`, which
//!   reads the clock twice (admission and end) and gives the algorithm the sample. One call
//!   at a time finds under half the limit in use: Vegas and Gradient2 update under their lock
//!   all the same, AIMD would not move, so its sample is steady and skips the lock;
//! * `aimd_learning`: the same with `failure()` at AIMD's least limit, so that every call
//!   takes the lock and updates it (the backoff, held at the least): AIMD's cost when it
//!   learns;
//! * `ignored`: the same with `ignore()`, which teaches nothing (no clock read at the end,
//!   no update): what a cancelled or ignored call costs;
//! * `floor`, `floor_vegas`, `floor_gradient2`: the least a limiter that updates its
//!   algorithm on every call under a lock can cost, built from the same parts with nothing
//!   else: `bulkhead_owned`, the two counter reads that time the call (the `quanta` counter
//!   the limiter reads) and the algorithm's `update` under an uncontended mutex.
//!
//! Group `adaptive_tower`, against the peer doing the same work: one `ready().await` +
//! `call().await` on a trivial service (current-thread tokio) through an adaptive AIMD limit of
//! 64 that waits in `poll_ready` when full (never full here) and learns from every response:
//! tower-resilience 0.13's `AdaptiveLimiterLayer` (a tokio semaphore, `Instant::now` twice,
//! a boxed future, its AIMD an atomic update) and Tidewall's `AdmitLayer` over an `AdaptiveLimiter` in
//! `AdmitMode::WaitReady`; and, for scale, the same `AdmitLayer` over a `Bulkhead` of 64. The
//! `_reject` rows are the same two layers in `AdmitMode::Reject`, which admits in `call` and
//! keeps no guard between `poll_ready` and `call`: what the layer costs without that hand-over.
//!
//! Group `adaptive_pipeline`: `Pipeline::call` of a ready operation through a pipeline whose
//! only stage is the admission (`PipelineBuilder::bulkhead`): the same AIMD limiter, and a
//! bulkhead of 64; and `no_admission`, a pipeline with no stage, which the two rows less it
//! leave what each admission costs. One call at a time in one task (current-thread tokio),
//! each row timing its own loop.
//!
//! Run: `cargo bench -p tidewall-benches --bench adaptive`.

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use tidewall::adaptive::{AdaptiveLimiter, Aimd, Gradient2, LimitAlgorithm, Vegas};
use tidewall::bulkhead::Bulkhead;
use tidewall_core::adaptive::Sample;

const LIMIT: u32 = 64;

fn limiter<A: LimitAlgorithm + Send + 'static>(algorithm: A) -> AdaptiveLimiter<A> {
    AdaptiveLimiter::builder(algorithm).build().unwrap()
}

/// The AIMD limiter of the composed rows (tower, pipeline): limit 64, between 1 and 1,000.
fn composed_aimd() -> AdaptiveLimiter<Aimd> {
    limiter(
        Aimd::builder()
            .min_limit(1)
            .initial_limit(LIMIT)
            .max_limit(1_000)
            .build()
            .unwrap(),
    )
}

fn adaptive(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let bulkhead = Bulkhead::builder(LIMIT as usize).build().unwrap();
    let aimd = limiter(
        Aimd::builder()
            .min_limit(1)
            .initial_limit(LIMIT)
            .build()
            .unwrap(),
    );
    let vegas = limiter(Vegas::builder().initial_limit(LIMIT).build().unwrap());
    let gradient2 = limiter(Gradient2::builder().initial_limit(LIMIT).build().unwrap());

    let mut group = c.benchmark_group("adaptive_round_trip");
    group.bench_function("bulkhead_owned", |b| {
        b.iter(|| drop(bulkhead.try_acquire_owned().unwrap()));
    });
    group.bench_function("aimd", |b| b.iter(|| aimd.try_acquire().unwrap().success()));
    group.bench_function("vegas", |b| {
        b.iter(|| vegas.try_acquire().unwrap().success())
    });
    group.bench_function("gradient2", |b| {
        b.iter(|| gradient2.try_acquire().unwrap().success());
    });
    group.bench_function("ignored", |b| {
        b.iter(|| aimd.try_acquire().unwrap().ignore())
    });
    let learning = limiter(
        Aimd::builder()
            .min_limit(LIMIT)
            .initial_limit(LIMIT)
            .build()
            .unwrap(),
    );
    group.bench_function("aimd_learning", |b| {
        b.iter(|| learning.try_acquire().unwrap().failure());
    });
    let aimd_floor = Aimd::builder()
        .min_limit(1)
        .initial_limit(LIMIT)
        .build()
        .unwrap();
    floor(&mut group, "floor", &bulkhead, aimd_floor);
    let vegas_floor = Vegas::builder().initial_limit(LIMIT).build().unwrap();
    floor(&mut group, "floor_vegas", &bulkhead, vegas_floor);
    let gradient2_floor = Gradient2::builder().initial_limit(LIMIT).build().unwrap();
    floor(&mut group, "floor_gradient2", &bulkhead, gradient2_floor);
    group.finish();
    // One call at a time is less than half the limit: no algorithm may have moved it.
    assert_eq!(
        (aimd.limit(), vegas.limit(), gradient2.limit()),
        (LIMIT, LIMIT, LIMIT)
    );
    assert_eq!(learning.limit(), LIMIT, "held at its least");
    assert_eq!(bulkhead.in_flight() + aimd.in_flight(), 0);
}

/// The parts of a round trip that updates `algorithm` under a lock, with nothing else (see the
/// module docs).
fn floor<A: LimitAlgorithm>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    bulkhead: &Bulkhead,
    algorithm: A,
) {
    let counter = quanta::Clock::new();
    let algorithm = std::sync::Mutex::new(algorithm);
    group.bench_function(name, |b| {
        b.iter(|| {
            let permit = bulkhead.try_acquire_owned().unwrap();
            let started = counter.raw();
            let ended = counter.raw();
            let rtt = std::time::Duration::from_nanos(counter.delta_as_nanos(started, ended));
            let sample = Sample {
                rtt,
                inflight: 1,
                dropped: false,
                at: rtt,
            };
            algorithm.lock().unwrap().update(&sample);
            drop(permit);
        });
    });
}

fn adaptive_tower(c: &mut Criterion) {
    use tidewall::tower::{AdmitLayer, AdmitMode};
    use tidewall_benches::tower_echo::{TYPED_ECHO, current_thread, per_call};
    use tower::Layer as _;

    let rt = current_thread();
    let _entered = rt.enter();
    let mut group = c.benchmark_group("adaptive_tower");
    let peer = tower_resilience::adaptive::AdaptiveLimiterLayer::new(
        tower_resilience::adaptive::Aimd::builder()
            .initial_limit(LIMIT as usize)
            .min_limit(1)
            .max_limit(1_000)
            .latency_threshold(std::time::Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    per_call(
        &mut group,
        "tower_resilience_aimd",
        &rt,
        peer.layer(TYPED_ECHO),
    );
    let ours = composed_aimd();
    per_call(
        &mut group,
        "tidewall_aimd",
        &rt,
        AdmitLayer::new(ours.clone(), AdmitMode::WaitReady).layer(TYPED_ECHO),
    );
    per_call(
        &mut group,
        "tidewall_aimd_reject",
        &rt,
        AdmitLayer::new(ours.clone(), AdmitMode::Reject).layer(TYPED_ECHO),
    );
    let bulkhead = Bulkhead::builder(LIMIT as usize).build().unwrap();
    per_call(
        &mut group,
        "tidewall_bulkhead_reject",
        &rt,
        AdmitLayer::new(bulkhead.clone(), AdmitMode::Reject).layer(TYPED_ECHO),
    );
    per_call(
        &mut group,
        "tidewall_bulkhead",
        &rt,
        AdmitLayer::new(bulkhead, AdmitMode::WaitReady).layer(TYPED_ECHO),
    );
    group.finish();
    assert_eq!(ours.in_flight(), 0);
}

fn adaptive_pipeline(c: &mut Criterion) {
    use std::convert::Infallible;
    use std::hint::black_box;
    use tidewall::pipeline::Pipeline;
    use tidewall_benches::awaited_in_a_loop;

    let rt = tidewall_benches::tower_echo::current_thread();
    let _entered = rt.enter();
    let mut group = c.benchmark_group("adaptive_pipeline");
    let ours = composed_aimd();
    let aimd = Pipeline::builder().bulkhead(ours.clone()).build().unwrap();
    let bulkhead = Pipeline::builder()
        .bulkhead(Bulkhead::builder(LIMIT as usize).build().unwrap())
        .build()
        .unwrap();
    let none = Pipeline::builder().build().unwrap();
    let (aimd, bulkhead, none) = (&aimd, &bulkhead, &none);
    let one = &1u32;
    let op = || async { Ok::<_, Infallible>(*black_box(one)) };
    // One closure a row: each pipeline's `call` has its own caller, as a service's would.
    awaited_in_a_loop(&mut group, &rt, "tidewall_aimd", || async move {
        aimd.call(op).await.unwrap()
    });
    awaited_in_a_loop(&mut group, &rt, "tidewall_bulkhead", || async move {
        bulkhead.call(op).await.unwrap()
    });
    awaited_in_a_loop(&mut group, &rt, "no_admission", || async move {
        none.call(op).await.unwrap()
    });
    group.finish();
    assert_eq!(ours.in_flight(), 0);
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::{adaptive, adaptive_pipeline, adaptive_tower, criterion_group};
    criterion_group! { name = benches; config = tidewall_benches::criterion(); targets = adaptive, adaptive_tower, adaptive_pipeline }
}
criterion_main!(group::benches);
