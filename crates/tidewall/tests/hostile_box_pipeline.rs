//! Hostile black-box tests of `pipeline::BoxPipeline`, written from the rustdoc alone: the
//! same seeded scenarios through a static `Pipeline` and its boxed twin must give the same
//! results at the same instants with the same attempts; boxed calls dropped at seeded points
//! release their bulkhead slots and breaker probes; clones share one pipeline.

mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{HOUR, Rng, assert_conserved, maybe_cancel, ms};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::{Verdict, WithRetryAfter};
use tidewall::pipeline::{BoxPipeline, Pipeline, RetryStage};
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::{Clocked, Scripted};
use tidewall::{Backoff, Deadline, Error, FutureExt as _, Jitter, Rejected, RetryAfter};

/// An operation's error: retryable, fatal, not the service's fault, or busy with a hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    Transient,
    Fatal,
    Ignore,
    Busy(u64),
}

impl RetryAfter for Fail {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Fail::Busy(n) => Some(ms(*n)),
            _ => None,
        }
    }
}

type Classifier = fn(Result<&u32, &Fail>) -> Verdict;

fn classify(result: Result<&u32, &Fail>) -> Verdict {
    match result {
        Ok(_) => Verdict::Success,
        Err(Fail::Transient | Fail::Busy(_)) => Verdict::RetryableFailure,
        Err(Fail::Fatal) => Verdict::Failure,
        Err(Fail::Ignore) => Verdict::Ignored,
    }
}

type Static<R> = Pipeline<
    Clocked<R>,
    (),
    Bulkhead<Clocked<R>>,
    RetryStage,
    CircuitBreaker<Clocked<R>>,
    Classifier,
>;

/// The same stages, the retry stage also honouring the operation's hints.
type StaticHinted<R> = Pipeline<
    Clocked<R>,
    (),
    Bulkhead<Clocked<R>>,
    RetryStage,
    CircuitBreaker<Clocked<R>>,
    WithRetryAfter<Classifier>,
>;

/// The policies every scenario runs through, fresh, with the bulkhead and breaker kept to look
/// at. `jitter` draws from the pipeline's fixed seed.
struct Stages<R: Runtime> {
    pipeline: Static<R>,
    hinted: StaticHinted<R>,
    bulkhead: Bulkhead<Clocked<R>>,
    breaker: CircuitBreaker<Clocked<R>>,
}

fn stages<R: Runtime>(rt: &Clocked<R>, slots: usize, queue: usize, probes: u32) -> Stages<R> {
    let bulkhead = Bulkhead::builder(slots)
        .max_queue(queue)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(3)
        .break_duration(ms(150))
        .half_open_probes(probes)
        .build()
        .unwrap();
    let backoff = Backoff::exponential(ms(20))
        .jitter(Jitter::Full)
        .max_attempts(4)
        .build()
        .unwrap();
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(ms(700))
        .min_attempt_time(ms(5))
        .seed(0x5eed)
        .bulkhead(bulkhead.clone())
        .retry(backoff)
        .max_retry_after(ms(250))
        .breaker(breaker.clone())
        .attempt_timeout(ms(90))
        .classify(classify as Classifier);
    // Clones of the stages share their state: both pipelines use one bulkhead and breaker.
    let hinted = pipeline.clone().honor_retry_after().build().unwrap();
    let pipeline = pipeline.build().unwrap();
    Stages {
        pipeline,
        hinted,
        bulkhead,
        breaker,
    }
}

/// How a call is made: plain, with a caller deadline, or honouring the operation's hints.
#[derive(Debug, Clone, Copy)]
enum Way {
    Plain,
    Before(u64),
    Hints(u64),
}

fn pick<T: Copy>(rng: &mut Rng, from: &[T]) -> T {
    from[usize::try_from(rng.below(from.len() as u64)).unwrap()]
}

/// One call's script: each attempt's latency and outcome.
type Script = Vec<(Duration, Result<u32, Fail>)>;

fn script(rng: &mut Rng) -> Script {
    (0..1 + rng.below(5))
        .map(|_| {
            let latency = ms(pick(rng, &[0, 3, 40, 120]));
            let outcome = match rng.below(8) {
                0..=2 => Ok(u32::try_from(rng.below(100)).unwrap()),
                3 | 4 => Err(Fail::Transient),
                5 => Err(Fail::Fatal),
                6 => Err(Fail::Ignore),
                _ => Err(Fail::Busy(rng.below(400))),
            };
            (latency, outcome)
        })
        .collect()
}

fn plan(seed: u64) -> Vec<(Duration, Way, Script)> {
    let mut rng = Rng::new(seed);
    (0..25)
        .map(|_| {
            let gap = match rng.below(6) {
                0 => HOUR,
                _ => ms(rng.below(200)),
            };
            let way = match rng.below(3) {
                0 => Way::Plain,
                1 => Way::Before(rng.below(600)),
                _ => Way::Hints(rng.below(900)),
            };
            (gap, way, script(&mut rng))
        })
        .collect()
}

/// What one call showed: its result, its attempts' start offsets, how long it took, and the
/// breaker and bulkhead afterwards.
type Seen = (
    Result<u32, Error<Fail>>,
    Vec<Duration>,
    Duration,
    State,
    usize,
);

async fn run_static<R: Runtime>(rt: &Clocked<R>, seed: u64) -> Vec<Seen> {
    let s = stages(rt, 2, 2, 1);
    let mut seen = Vec::new();
    for (gap, way, steps) in plan(seed) {
        rt.sleep(gap).await;
        let op = Scripted::with_latency(rt.clone(), steps);
        let start = rt.now();
        let result = match way {
            Way::Plain => s.pipeline.call(|| op.call()).await,
            Way::Before(n) => {
                s.pipeline
                    .call_before(Deadline::after(rt, ms(n)), || op.call())
                    .await
            }
            Way::Hints(n) => {
                s.hinted
                    .call_before(Deadline::after(rt, ms(n)), || op.call())
                    .await
            }
        };
        seen.push((
            result,
            op.start_offsets(),
            rt.now() - start,
            s.breaker.state(),
            s.bulkhead.available(),
        ));
    }
    seen
}

async fn run_boxed<R: Runtime>(rt: &Clocked<R>, seed: u64) -> Vec<Seen> {
    let s = stages(rt, 2, 2, 1);
    let boxed: BoxPipeline<u32, Fail> = s.pipeline.boxed();
    let hinted: BoxPipeline<u32, Fail> = s.hinted.boxed();
    let mut seen = Vec::new();
    for (gap, way, steps) in plan(seed) {
        rt.sleep(gap).await;
        let op = Scripted::with_latency(rt.clone(), steps);
        let start = rt.now();
        let result = match way {
            Way::Plain => boxed.call(|| op.call()).await,
            Way::Before(n) => {
                boxed
                    .call_before(Deadline::after(rt, ms(n)), || op.call())
                    .await
            }
            Way::Hints(n) => {
                hinted
                    .call_before(Deadline::after(rt, ms(n)), || op.call())
                    .await
            }
        };
        seen.push((
            result,
            op.start_offsets(),
            rt.now() - start,
            s.breaker.state(),
            s.bulkhead.available(),
        ));
    }
    seen
}

async fn sequential_twins<R: Runtime>(rt: Clocked<R>) {
    for seed in 0..12 {
        let (fixed, boxed) = (run_static(&rt, seed).await, run_boxed(&rt, seed).await);
        for (i, (f, b)) in fixed.iter().zip(&boxed).enumerate() {
            assert_eq!(
                f,
                b,
                "seed {seed}, call {i}: static vs boxed ({:?})",
                plan(seed)[i]
            );
        }
    }
}

#[test]
fn a_boxed_pipeline_retries_times_and_answers_exactly_as_its_static_twin_on_every_runtime() {
    on_every_runtime!(sequential_twins);
}

/// Concurrent calls contending for a bulkhead of 2 with a queue of 2, started at seeded
/// offsets, some dropped at seeded virtual times: the same outcomes from both forms.
async fn contended<R: Runtime>(
    rt: &Clocked<R>,
    seed: u64,
    boxed: bool,
) -> Vec<(Option<Result<u32, Error<Fail>>>, Vec<Duration>, Duration)> {
    let s = stages(rt, 2, 2, 1);
    let (fixed, erased) = (
        Arc::new(s.pipeline.clone()),
        Arc::new(s.pipeline.boxed::<u32, Fail>()),
    );
    let mut rng = Rng::new(seed);
    let origin = rt.now();
    let calls = (0..8).map(|_| {
        let (offset, steps) = (ms(rng.below(60)), script(&mut rng));
        let cut = rng.chance(3).then(|| ms(rng.below(300)));
        let (fixed, erased, rt) = (fixed.clone(), erased.clone(), rt.clone());
        async move {
            rt.sleep(offset).await;
            let op = Scripted::with_latency(rt.clone(), steps);
            let call = async {
                if boxed {
                    erased.call(|| op.call()).await
                } else {
                    fixed.call(|| op.call()).await
                }
            };
            let result = match cut {
                Some(after) => call.timeout_on(&rt, after).await.ok(),
                None => Some(call.await),
            };
            (result, op.start_offsets(), rt.now() - origin)
        }
    });
    let seen = futures_util::future::join_all(calls).await;
    rt.sleep(ms(1)).await;
    assert_conserved(&s.bulkhead);
    seen
}

async fn contended_twins<R: Runtime>(rt: Clocked<R>) {
    for seed in 0..30 {
        let fixed = contended(&rt, seed, false).await;
        let boxed = contended(&rt, seed, true).await;
        assert_eq!(fixed, boxed, "seed {seed}");
    }
}

#[test]
fn contended_and_dropped_boxed_calls_match_their_static_twins_on_every_runtime() {
    on_every_runtime!(contended_twins);
}

/// Boxed calls dropped at seeded points (after some polls, or some virtual time) while they
/// wait for the bulkhead, sleep between retries, or hold a half-open probe: every slot and
/// probe comes back, and a dropped probe is recorded as nothing.
async fn dropped_boxed_calls_release<R: Runtime>(rt: Clocked<R>) {
    for seed in 0..40u64 {
        let s = stages(&rt, 2, 3, 1);
        let boxed = s.pipeline.boxed::<u32, Fail>();
        let mut rng = Rng::new(seed);
        let calls = (0..10).map(|_| {
            let (draw, offset, steps) = (rng.next(), ms(rng.below(100)), script(&mut rng));
            let (boxed, rt) = (boxed.clone(), rt.clone());
            async move {
                rt.sleep(offset).await;
                let op = Scripted::with_latency(rt.clone(), steps);
                maybe_cancel(&rt, draw, boxed.call(|| op.call())).await
            }
        });
        futures_util::future::join_all(calls).await;
        rt.sleep(ms(1)).await;
        assert_conserved(&s.bulkhead);
        // Whatever state the breaker is in, the probe slot of a half-open breaker is free.
        rt.sleep(HOUR).await;
        let probe = s
            .breaker
            .try_acquire()
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        assert!(
            probe.is_probe() || s.breaker.state() == State::Closed,
            "seed {seed}"
        );
        drop(probe);
    }
}

#[test]
fn boxed_calls_dropped_at_random_points_release_slots_and_probes_on_every_runtime() {
    on_every_runtime!(dropped_boxed_calls_release);
}

/// A boxed call that holds the only half-open probe and is dropped: the probe comes back at
/// once (no `CircuitOpen` for the next caller) and the breaker stays half-open; the static
/// pipeline does the same.
async fn dropped_probe<R: Runtime>(rt: Clocked<R>) {
    for boxed in [false, true] {
        let s = stages(&rt, 4, 1, 1);
        for _ in 0..3 {
            s.breaker.try_acquire().unwrap().failure();
        }
        assert_eq!(s.breaker.state(), State::Open);
        rt.sleep(ms(150)).await;
        let erased = s.pipeline.clone().boxed::<u32, Fail>();
        let hang = || std::future::pending::<Result<u32, Fail>>();
        let call = async {
            if boxed {
                erased.call(hang).await
            } else {
                s.pipeline.call(hang).await
            }
        };
        let cut = call.timeout_on(&rt, ms(10)).await;
        assert!(cut.is_err(), "the hanging call was cut");
        assert_eq!(
            s.breaker.state(),
            State::HalfOpen,
            "boxed {boxed}: a dropped probe records nothing"
        );
        let probe = s.breaker.try_acquire();
        assert!(
            probe.as_ref().is_ok_and(|p| p.is_probe()),
            "boxed {boxed}: the probe came back: {:?}",
            probe.err()
        );
        drop(probe);
        assert_conserved(&s.bulkhead);
    }
}

#[test]
fn a_dropped_boxed_call_gives_its_half_open_probe_back_on_every_runtime() {
    on_every_runtime!(dropped_probe);
}

/// Clones of a boxed pipeline share its breaker and bulkhead, as clones of the static one do.
async fn clones_share<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(1)
        .reject_when_full()
        .runtime(rt.clone())
        .build()
        .unwrap();
    let breaker = CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(2)
        .break_duration(ms(100))
        .build()
        .unwrap();
    let a: BoxPipeline<u32, Fail> = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead.clone())
        .breaker(breaker.clone())
        .build()
        .unwrap()
        .boxed();
    let b = a.clone();
    assert!(format!("{b:?}").contains("BoxPipeline"), "{b:?}");
    // One clone holds the only slot: the other is refused.
    let clock = rt.clone();
    let (held, refused) = futures_util::join!(
        a.call(|| {
            let clock = clock.clone();
            async move {
                clock.sleep(ms(20)).await;
                Ok(1)
            }
        }),
        async { b.call(|| async { Ok(2) }).await }
    );
    assert_eq!(
        (held, refused),
        (Ok(1), Err(Error::Rejected(Rejected::BulkheadFull)))
    );
    assert_conserved(&bulkhead);
    // Failures through one clone open the breaker for the other.
    for _ in 0..2 {
        assert_eq!(
            a.call(|| async { Err(Fail::Transient) }).await,
            Err(Error::Inner(Fail::Transient))
        );
    }
    let start: Instant = rt.now();
    assert!(matches!(
        b.call(|| async { Ok(3) }).await,
        Err(Error::Rejected(Rejected::CircuitOpen { retry_after })) if retry_after == ms(100)
    ));
    assert_eq!(rt.now(), start);
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn clones_of_a_boxed_pipeline_share_its_stages_on_every_runtime() {
    on_every_runtime!(clones_share);
}
