//! Hostile composition tests, written from the rustdoc alone: the pipeline, the tower layers,
//! hedging and nesting, under cancellation at random await points (seeded), with capacity
//! checked to be conserved afterwards; and builders fed extreme values.

mod common;
mod support;

use std::future::poll_fn;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use support::{Gauge, Rng, assert_conserved, maybe_cancel, ms};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::hedge::{Hedge, Idempotent};
use tidewall::pipeline::Pipeline;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Runtime, Spawn, TaskHandle};
use tidewall::testing::Clocked;
use tidewall::tower::{AdmitLayer, AdmitMode, BreakerLayer, RetryLayer, TimeoutLayer};
use tidewall::{Backoff, Error, Jitter, Rejected};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

fn backoff(attempts: u32, delay: Duration) -> Backoff {
    Backoff::constant(delay)
        .jitter(Jitter::None)
        .max_attempts(attempts)
        .build()
        .unwrap()
}

/// An operation that sleeps `d` while counted by `gauge`, then succeeds or fails.
async fn work<R: Runtime>(rt: R, gauge: Gauge, d: Duration, fail: bool) -> Result<u64, String> {
    let _running = gauge.enter();
    rt.sleep(d).await;
    if fail {
        Err("boom".to_owned())
    } else {
        Ok(u64::try_from(d.as_millis()).unwrap())
    }
}

/// Spawns `tasks`, aborting a seeded share of them at seeded moments, then joins them all.
async fn join_with_random_aborts<R: Runtime, T: Send + 'static>(
    rt: &R,
    rng: &mut Rng,
    handles: Vec<R::JoinHandle<T>>,
) -> Vec<Option<T>> {
    let mut plan = Vec::new();
    for handle in handles {
        let abort = rng
            .chance(4)
            .then(|| Duration::from_micros(rng.below(40_000)));
        plan.push((handle, abort));
    }
    for (handle, abort) in &plan {
        if let Some(after) = abort {
            rt.sleep(*after / 16).await;
            handle.abort();
        }
    }
    let mut out = Vec::new();
    for (handle, abort) in plan {
        match handle.await {
            Ok(v) => out.push(Some(v)),
            Err(e) => {
                assert!(
                    abort.is_some() && e.is_cancelled(),
                    "unexpected join error {e:?}"
                );
                out.push(None);
            }
        }
    }
    out
}

// --- the pipeline, every stage, under random cancellation --------------------------------

// Docs (`Pipeline::call`): "Cancel safety: dropping the future releases everything it holds
// (bulkhead slot, breaker permit — recorded as nothing) and drops the running attempt."
// Docs (breaker module): "a permit dropped, cancelled or unwound by a panic records nothing
// and a probe gives its slot back".
async fn full_pipeline_under_random_cancellation<R: Runtime>(rt: Clocked<R>) {
    let limiter = RateLimiter::builder(2_000, Duration::from_secs(1))
        .burst(40)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let bulkhead = Bulkhead::builder(3)
        .max_queue(400)
        .max_wait(ms(300))
        .runtime(rt.clone())
        .build()
        .unwrap();
    // No max_half_open_wait: a probe slot leaked by a cancelled call would leave the breaker
    // half-open for ever, which the end of the test would see.
    // Consecutive failures only: with the default failure rate also on, the closing successes
    // below can legitimately open it (a chaos phase that ends with, say, 5 failures among 6
    // calls since the last close puts the 4th success at the 10-call minimum and 50 %), which
    // is not the stuck half-open breaker this test looks for (1 run in ~40 did that).
    let breaker = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(4)
        .break_duration(ms(30))
        .half_open_probes(2)
        .max_half_open_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = Arc::new(
        Pipeline::builder()
            .runtime(rt.clone())
            .deadline(ms(400))
            .rate_limit(limiter)
            .bulkhead(bulkhead.clone())
            .retry(backoff(3, ms(5)))
            .breaker(breaker.clone())
            .attempt_timeout(ms(25))
            .build()
            .unwrap(),
    );
    let gauge = Gauge::default();
    let mut rng = Rng::new(0xC0FFEE);
    let mut handles = Vec::new();
    for _ in 0..240 {
        let (pipeline, gauge, clock) = (pipeline.clone(), gauge.clone(), rt.clone());
        let draw = rng.next();
        let (d, fail) = (ms(rng.below(40)), rng.chance(3));
        handles.push(rt.spawn(async move {
            let call = pipeline.call(|| work(clock.clone(), gauge.clone(), d, fail));
            maybe_cancel(&clock, draw, call).await
        }));
    }
    let _ = join_with_random_aborts(&rt, &mut rng, handles).await;
    assert_eq!(gauge.now(), 0, "no attempt left running");
    assert!(
        gauge.most() <= 3,
        "{} attempts ran at once in a bulkhead of 3",
        gauge.most()
    );
    assert_conserved(&bulkhead);

    // Not stuck half-open: after the break, successes close the breaker.
    rt.sleep(Duration::from_secs(1)).await;
    // The state before and after each call, for the failure message.
    let mut trail = vec![breaker.state()];
    for _ in 0..4 {
        let r = pipeline
            .call(|| work(rt.clone(), gauge.clone(), ms(1), false))
            .await;
        trail.push(breaker.state());
        assert_eq!(
            r,
            Ok(1),
            "breaker states {trail:?}, counts {:?}",
            breaker.counts()
        );
    }
    assert_eq!(
        breaker.state(),
        State::Closed,
        "breaker states {trail:?}, counts {:?}",
        breaker.counts()
    );
    assert_conserved(&bulkhead);
}

#[test]
fn a_full_pipeline_conserves_every_slot_under_random_cancellation_on_every_runtime() {
    on_every_runtime!(full_pipeline_under_random_cancellation);
}

// Docs (bulkhead module): "A `Bulkhead` admits at most `max_concurrent` calls at once. When
// full, a caller either gets `Rejected::BulkheadFull` at once (`max_queue(0)` ...)".
async fn pipeline_reject_when_full_capacity_one<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(1)
        .max_queue(0)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = Arc::new(
        Pipeline::builder()
            .runtime(rt.clone())
            .bulkhead(bulkhead.clone())
            .retry(backoff(2, ms(1)))
            .build()
            .unwrap(),
    );
    let gauge = Gauge::default();
    let full = Arc::new(AtomicUsize::new(0));
    let mut rng = Rng::new(11);
    let mut handles = Vec::new();
    for _ in 0..64 {
        let (pipeline, gauge, clock, full) =
            (pipeline.clone(), gauge.clone(), rt.clone(), full.clone());
        let (d, start) = (ms(1 + rng.below(9)), ms(rng.below(30)));
        let draw = rng.next();
        handles.push(rt.spawn(async move {
            clock.sleep(start).await;
            let call = pipeline.call(|| work(clock.clone(), gauge.clone(), d, false));
            if let Some(Err(e)) = maybe_cancel(&clock, draw, call).await {
                assert_eq!(e, Error::Rejected(Rejected::BulkheadFull));
                full.fetch_add(1, SeqCst);
            }
        }));
    }
    let _ = join_with_random_aborts(&rt, &mut rng, handles).await;
    assert!(
        gauge.most() <= 1,
        "{} ran at once with capacity 1",
        gauge.most()
    );
    assert!(
        full.load(SeqCst) > 0,
        "the scenario made the bulkhead refuse"
    );
    assert_conserved(&bulkhead);
}

#[test]
fn a_pipeline_bulkhead_of_one_that_rejects_when_full_holds_on_every_runtime() {
    on_every_runtime!(pipeline_reject_when_full_capacity_one);
}

// --- nesting ------------------------------------------------------------------------------

// Docs (`Pipeline::call`): cancel safety as above, for pipelines inside pipeline operations.
async fn nested_pipelines_under_random_cancellation<R: Runtime>(rt: Clocked<R>) {
    let outer_bh = Bulkhead::builder(4)
        .max_queue(200)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let inner_bh = Bulkhead::builder(1)
        .max_queue(200)
        .max_wait(ms(50))
        .runtime(rt.clone())
        .build()
        .unwrap();
    // Consecutive failures only, for the reason given in `full_pipeline_under_random_cancellation`.
    let breaker = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(3)
        .break_duration(ms(20))
        .max_half_open_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let inner = Arc::new(
        Pipeline::builder()
            .runtime(rt.clone())
            .bulkhead(inner_bh.clone())
            .retry(backoff(2, ms(2)))
            .breaker(breaker.clone())
            .build()
            .unwrap(),
    );
    let outer = Arc::new(
        Pipeline::builder()
            .runtime(rt.clone())
            .deadline(ms(250))
            .bulkhead(outer_bh.clone())
            .retry(backoff(3, ms(3)))
            .build()
            .unwrap(),
    );
    let gauge = Gauge::default();
    let mut rng = Rng::new(0xBEEF);
    let mut handles = Vec::new();
    for _ in 0..120 {
        let (outer, inner, gauge, clock) =
            (outer.clone(), inner.clone(), gauge.clone(), rt.clone());
        let (d, fail) = (ms(rng.below(12)), rng.chance(4));
        let draw = rng.next();
        handles.push(rt.spawn(async move {
            let call = outer.call(|| {
                let (inner, gauge, clock) = (inner.clone(), gauge.clone(), clock.clone());
                async move {
                    inner
                        .call(|| work(clock.clone(), gauge.clone(), d, fail))
                        .await
                        .map_err(|e| format!("{e}"))
                }
            });
            maybe_cancel(&clock, draw, call).await
        }));
    }
    let _ = join_with_random_aborts(&rt, &mut rng, handles).await;
    assert_eq!(gauge.now(), 0);
    assert!(
        gauge.most() <= 1,
        "{} ran in an inner bulkhead of 1",
        gauge.most()
    );
    assert_conserved(&outer_bh);
    assert_conserved(&inner_bh);
    rt.sleep(Duration::from_secs(1)).await;
    let r = inner
        .call(|| work(rt.clone(), gauge.clone(), ms(1), false))
        .await;
    assert_eq!(r, Ok(1));
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn nested_pipelines_conserve_both_bulkheads_under_random_cancellation_on_every_runtime() {
    on_every_runtime!(nested_pipelines_under_random_cancellation);
}

// Docs (hedge module): "the first success wins and the losers are dropped (cancelled)";
// (`HedgeFuture`) "Cancel safety: dropping it drops every attempt still running."
// Docs (`Bulkhead::call`): "Cancel safety: dropping the future frees the slot or leaves the
// queue."
async fn hedges_inside_a_bulkhead_inside_a_pipeline<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(3)
        .max_queue(500)
        .max_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let hedge = Hedge::builder()
        .delay(ms(4))
        .max_hedges(3)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let pipeline = Arc::new(
        Pipeline::builder()
            .runtime(rt.clone())
            .deadline(ms(120))
            .retry(backoff(2, ms(1)))
            .build()
            .unwrap(),
    );
    let gauge = Gauge::default();
    let mut rng = Rng::new(0x4ED6E);
    let mut handles = Vec::new();
    for _ in 0..100 {
        let (pipeline, hedge, bulkhead, gauge, clock) = (
            pipeline.clone(),
            hedge.clone(),
            bulkhead.clone(),
            gauge.clone(),
            rt.clone(),
        );
        let seed = rng.next();
        let draw = rng.next();
        handles.push(rt.spawn(async move {
            let call = pipeline.call(|| {
                let (hedge, bulkhead, gauge, clock) = (
                    hedge.clone(),
                    bulkhead.clone(),
                    gauge.clone(),
                    clock.clone(),
                );
                async move {
                    let mut attempt = Rng::new(seed);
                    hedge
                        .call(Idempotent(|| {
                            let d = ms(attempt.below(30));
                            let fail = attempt.chance(3);
                            let (bulkhead, gauge, clock) =
                                (bulkhead.clone(), gauge.clone(), clock.clone());
                            async move {
                                bulkhead
                                    .call(|| work(clock, gauge, d, fail))
                                    .await
                                    .map_err(|e| format!("{e}"))
                            }
                        }))
                        .await
                }
            });
            maybe_cancel(&clock, draw, call).await
        }));
    }
    let _ = join_with_random_aborts(&rt, &mut rng, handles).await;
    assert_eq!(gauge.now(), 0, "no hedge left running");
    assert!(gauge.most() <= 3);
    assert_conserved(&bulkhead);
}

#[test]
fn hedged_attempts_holding_bulkhead_slots_conserve_capacity_on_every_runtime() {
    on_every_runtime!(hedges_inside_a_bulkhead_inside_a_pipeline);
}

// --- tower --------------------------------------------------------------------------------

/// `calls` requests (each a sleep below `longest` ms) through clones of `svc`, each cancelled
/// at a seeded random point or its task aborted at a random moment; returns once all are done.
async fn storm<R, S>(rt: &Clocked<R>, svc: &S, rng: &mut Rng, calls: usize, longest: u64)
where
    R: Runtime,
    S: Service<u64> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
{
    let mut handles = Vec::new();
    for _ in 0..calls {
        let (mut svc, clock) = (svc.clone(), rt.clone());
        let (d, draw) = (rng.below(longest), rng.next());
        handles.push(rt.spawn(async move {
            let call = async move {
                let ready = svc.ready().await.map_err(|e| e.to_string())?;
                ready.call(d).await.map_err(|e| e.to_string())
            };
            maybe_cancel(&clock, draw, call).await
        }));
    }
    let _ = join_with_random_aborts(rt, rng, handles).await;
}

/// `work` as a service, its `String` errors given the stack's one error type, `Error<String>`
/// (the layers above add their refusals and timeouts to it).
fn sleeper<R: Runtime>(
    rt: &R,
    gauge: &Gauge,
) -> impl Service<
    u64,
    Response = u64,
    Error = Error<String>,
    Future = impl std::future::Future<Output = Result<u64, Error<String>>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    let (rt, gauge) = (rt.clone(), gauge.clone());
    tower::service_fn(move |d: u64| {
        let (rt, gauge) = (rt.clone(), gauge.clone());
        // Odd durations fail.
        work(rt, gauge, ms(d), d % 2 == 1)
    })
    .map_err(Error::Inner)
}

// Docs (`AdmitMode::WaitReady`): "the service is not ready until the stage admits, and the
// guard taken there (a bulkhead slot) is held until the call's response future completes."
// (`AdmitService`): "A clone shares the stage and starts with nothing admitted." Docs
// (bulkhead): "Nothing leaks."
async fn tower_bulkhead_wait_under_random_cancellation<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(2)
        .max_queue(300)
        .max_wait(ms(40))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let gauge = Gauge::default();
    let svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady).layer(sleeper(&rt, &gauge));
    let mut rng = Rng::new(0x70E4);
    storm(&rt, &svc, &mut rng, 150, 15).await;
    drop(svc);
    assert_eq!(gauge.now(), 0);
    assert!(
        gauge.most() <= 2,
        "{} ran at once through a bulkhead of 2",
        gauge.most()
    );
    assert_conserved(&bulkhead);
}

#[test]
fn a_waiting_tower_bulkhead_conserves_capacity_under_random_cancellation_on_every_runtime() {
    on_every_runtime!(tower_bulkhead_wait_under_random_cancellation);
}

// Docs (`BulkheadService`): "A clone starts without a reserved slot." A slot reserved by
// `poll_ready` belongs to that service; polling ready again must not take a second one, and
// dropping the service (or its clone) must not lose or double-free it.
async fn tower_bulkhead_reserved_slot_is_released_once<R: Runtime>(rt: Clocked<R>) {
    for wait in [true, false] {
        let bulkhead = Bulkhead::builder(1)
            .max_queue(4)
            .max_wait(ms(10))
            .runtime(rt.clone())
            .build()
            .unwrap();
        let gauge = Gauge::default();
        let layer = if wait {
            AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
        } else {
            AdmitLayer::new(bulkhead.clone(), AdmitMode::Reject)
        };
        let mut svc = layer.layer(sleeper(&rt, &gauge));
        poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        // Ready twice in a row (tower allows it): still one service, still at most one slot.
        let again = poll_fn(|cx| svc.poll_ready(cx)).await;
        assert!(again.is_ok(), "wait={wait}: ready again: {again:?}");
        assert!(bulkhead.available() <= 1);
        let clone = svc.clone();
        drop(svc);
        drop(clone);
        assert_conserved(&bulkhead);

        // A call completes, the service is reused, then dropped.
        let mut svc = layer_for(wait, &bulkhead).layer(sleeper(&rt, &gauge));
        for d in [2u64, 4, 3] {
            let r = svc.ready().await.map(|s| s.call(d));
            let r = match r {
                Ok(f) => f.await,
                Err(e) => Err(e),
            };
            assert_eq!(r.is_ok(), d % 2 == 0, "wait={wait} d={d}: {r:?}");
        }
        drop(svc);
        assert_conserved(&bulkhead);
    }
}

fn layer_for<R: Runtime>(wait: bool, bulkhead: &Bulkhead<R>) -> AdmitLayer<Bulkhead<R>> {
    if wait {
        AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
    } else {
        AdmitLayer::new(bulkhead.clone(), AdmitMode::Reject)
    }
}

#[test]
fn a_tower_bulkhead_slot_reserved_in_poll_ready_is_released_exactly_once_on_every_runtime() {
    on_every_runtime!(tower_bulkhead_reserved_slot_is_released_once);
}

// Docs (`AdmitMode::Reject`): "the response future fails at once with the stage's own
// rejection (`Rejected::BulkheadFull`, ...)" (load shedding).
async fn tower_bulkhead_reject_sheds_at_once<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(1).runtime(rt.clone()).build().unwrap();
    let gauge = Gauge::default();
    let svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::Reject).layer(sleeper(&rt, &gauge));
    let mut a = svc.clone();
    let first = rt.spawn(async move {
        let s = a.ready().await?;
        s.call(100).await
    });
    rt.sleep(ms(10)).await;
    assert_eq!(gauge.now(), 1);
    let mut b = svc.clone();
    let start = rt.now();
    let r = match b.ready().await {
        Ok(s) => s.call(2).await,
        Err(e) => Err(e),
    };
    assert_eq!(r, Err(Error::Rejected(Rejected::BulkheadFull)));
    assert_eq!(rt.now(), start, "shed at once, without waiting");
    drop(b);
    assert_eq!(first.await.unwrap(), Ok(100));
    drop(svc);
    assert_conserved(&bulkhead);
}

#[test]
fn a_rejecting_tower_bulkhead_sheds_at_once_on_every_runtime() {
    on_every_runtime!(tower_bulkhead_reject_sheds_at_once);
}

// Docs (`AdmitLayer`): "holding the stage's guard (a bulkhead slot) until the call's future
// completes ... Cancel safety: dropping the response future drops the admission wait or the
// guard, releasing whatever it held."
async fn admit_layer_bulkhead_under_random_cancellation<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(2)
        .max_queue(300)
        .max_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let gauge = Gauge::default();
    let svc = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitCall)
        .runtime(rt.clone())
        .max_wait(ms(60))
        .layer(sleeper(&rt, &gauge));
    let mut rng = Rng::new(0xAD417);
    storm(&rt, &svc, &mut rng, 150, 15).await;
    drop(svc);
    assert_eq!(gauge.now(), 0);
    assert!(
        gauge.most() <= 2,
        "{} ran at once through an admitted bulkhead of 2",
        gauge.most()
    );
    assert_conserved(&bulkhead);
}

#[test]
fn an_admit_layer_bulkhead_conserves_capacity_under_random_cancellation_on_every_runtime() {
    on_every_runtime!(admit_layer_bulkhead_under_random_cancellation);
}

// A whole tower stack: timeout → retry → breaker → bulkhead(wait) → service, each request
// cancelled at random. Docs as above for each layer; the breaker must not stay half-open.
async fn tower_stack_under_random_cancellation<R: Runtime>(rt: Clocked<R>) {
    let bulkhead = Bulkhead::builder(2)
        .max_queue(300)
        .max_wait(ms(30))
        .runtime(rt.clone())
        .build()
        .unwrap();
    // Consecutive failures only, for the reason given in `full_pipeline_under_random_cancellation`.
    let breaker = CircuitBreaker::builder()
        .no_failure_rate()
        .consecutive_failures(3)
        .break_duration(ms(15))
        .half_open_probes(3)
        .max_half_open_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let gauge = Gauge::default();
    let inner = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady).layer(sleeper(&rt, &gauge));
    let inner = BreakerLayer::new(breaker.clone()).layer(inner);
    let inner = RetryLayer::new(backoff(3, ms(2)))
        .runtime(rt.clone())
        .layer(inner);
    let svc = TimeoutLayer::new(ms(80)).runtime(rt.clone()).layer(inner);
    let mut rng = Rng::new(0x57AC);
    storm(&rt, &svc, &mut rng, 150, 20).await;
    assert_eq!(gauge.now(), 0);
    assert!(gauge.most() <= 2);
    rt.sleep(Duration::from_secs(1)).await;
    let mut svc = svc;
    // The state before and after each call, for the failure message.
    let mut trail = vec![breaker.state()];
    for _ in 0..3 {
        let s = svc.ready().await.unwrap();
        let r = s.call(4).await;
        trail.push(breaker.state());
        assert!(r.is_ok(), "breaker states {trail:?}: {r:?}");
    }
    assert_eq!(breaker.state(), State::Closed, "breaker states {trail:?}");
    drop(svc);
    assert_conserved(&bulkhead);
}

#[test]
fn a_tower_stack_conserves_capacity_and_never_sticks_half_open_on_every_runtime() {
    on_every_runtime!(tower_stack_under_random_cancellation);
}

// --- extreme configurations ---------------------------------------------------------------

// Docs (breaker module): "Exact probes: a half-open slot is reserved with a compare-and-swap,
// so however many callers race, exactly the configured number get through." and
// `MAX_HALF_OPEN_PROBES` "The most half-open probes".
async fn breaker_with_the_most_probes<R: Runtime>(rt: Clocked<R>) {
    let max = tidewall_core::breaker::MAX_HALF_OPEN_PROBES;
    let breaker = CircuitBreaker::builder()
        .consecutive_failures(1)
        .break_duration(ms(10))
        .half_open_probes(max)
        .max_half_open_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    for round in 0..3 {
        breaker.try_acquire().unwrap().failure();
        assert_eq!(breaker.state(), State::Open, "round {round}");
        rt.sleep(ms(10)).await;
        let mut probes: Vec<_> = (0..max)
            .map(|i| {
                breaker
                    .try_acquire()
                    .unwrap_or_else(|e| panic!("round {round}: probe {i} of {max}: {e}"))
            })
            .collect();
        assert!(probes.iter().all(|p| p.is_probe()));
        for _ in 0..10 {
            assert!(
                breaker.try_acquire().is_err(),
                "round {round}: a probe past the maximum"
            );
        }
        // Dropped probes give their slots back: the same number can be taken again.
        probes.truncate(max as usize / 2);
        let refill: Vec<_> = (0..max - max / 2)
            .map(|i| {
                breaker
                    .try_acquire()
                    .unwrap_or_else(|e| panic!("round {round}: refill {i}: {e}"))
            })
            .collect();
        assert!(breaker.try_acquire().is_err());
        for p in probes.into_iter().chain(refill) {
            p.success();
        }
        assert_eq!(
            breaker.state(),
            State::Closed,
            "round {round}: every probe succeeded"
        );
    }
}

#[test]
fn a_breaker_with_the_most_half_open_probes_admits_exactly_that_many_on_every_runtime() {
    on_every_runtime!(breaker_with_the_most_probes);
}

// Docs (lib): "Builders validate and return `ConfigError`; nothing panics on user input."
// DESIGN §4: "no panic, wrap or silent rounding on user input".
#[test]
fn builders_given_extreme_values_return_typed_errors_or_faithful_values() {
    use tidewall::ConfigError;
    let rt = Clocked::new(tidewall::rt::Tokio);
    let huge = Duration::MAX;
    let max_nanos = Duration::from_nanos(u64::MAX);

    // Bulkhead.
    let b = Bulkhead::builder(usize::MAX).runtime(rt.clone()).build();
    if let Ok(b) = &b {
        assert_eq!(b.capacity(), usize::MAX);
        assert_eq!(b.available(), usize::MAX);
        let p = b.try_acquire().unwrap();
        assert_eq!(b.available(), usize::MAX - 1);
        assert_eq!(b.in_flight(), 1);
        drop(p);
        assert_eq!(b.available(), usize::MAX);
    }
    let b = Bulkhead::builder(4)
        .max_queue(usize::MAX)
        .runtime(rt.clone())
        .build();
    assert!(b.is_ok(), "{b:?}");
    assert!(matches!(
        Bulkhead::builder(4)
            .max_wait(huge)
            .runtime(rt.clone())
            .build(),
        Err(ConfigError::DurationOverflow { .. })
    ));
    assert!(
        Bulkhead::builder(4)
            .max_wait(max_nanos)
            .runtime(rt.clone())
            .build()
            .is_ok()
    );
    assert!(matches!(
        Bulkhead::builder(0).runtime(rt.clone()).build(),
        Err(ConfigError::Zero { .. })
    ));
    assert!(matches!(
        Bulkhead::builder(1)
            .max_queue(1)
            .max_wait(Duration::ZERO)
            .runtime(rt.clone())
            .build(),
        Err(ConfigError::Zero { .. })
    ));

    // Breaker.
    let breaker = |f: fn(
        tidewall::breaker::CircuitBreakerBuilder<Clocked<tidewall::rt::Tokio>>,
    ) -> tidewall::breaker::CircuitBreakerBuilder<
        Clocked<tidewall::rt::Tokio>,
    >| {
        f(CircuitBreaker::builder().runtime(rt.clone()))
            .build()
            .map(|_| ())
    };
    assert!(breaker(|b| b.half_open_probes(4096)).is_err());
    assert!(breaker(|b| b.half_open_probes(u32::MAX)).is_err());
    assert!(breaker(|b| b.half_open_probes(0)).is_err());
    assert!(breaker(|b| b.break_duration(Duration::MAX)).is_err());
    assert!(breaker(|b| b.break_duration(Duration::ZERO)).is_err());
    assert!(breaker(|b| b.max_half_open_wait(Some(Duration::MAX))).is_err());
    assert!(breaker(|b| b.failure_rate(f64::NAN)).is_err());
    assert!(breaker(|b| b.failure_rate(1.0 + 1e-9)).is_err());
    assert!(breaker(|b| b.slow_call_rate(0.5, Duration::MAX)).is_err());
    assert!(breaker(|b| b.window(tidewall::breaker::Window::Count { calls: u32::MAX })).is_err());
    assert!(
        breaker(|b| b.window(tidewall::breaker::Window::Time {
            span: Duration::MAX,
            buckets: 10
        }))
        .is_err()
    );
    assert!(
        breaker(|b| b.window(tidewall::breaker::Window::Time {
            span: Duration::from_nanos(5),
            buckets: 10
        }))
        .is_err()
    );
    assert!(
        breaker(|b| b.window(tidewall::breaker::Window::Time {
            span: Duration::from_secs(1),
            buckets: u32::MAX
        }))
        .is_err()
    );
    assert!(breaker(|b| b.consecutive_failures(u32::MAX)).is_ok());

    // Rate limiter.
    let rl = |count, period, burst| {
        RateLimiter::builder(count, period)
            .burst(burst)
            .runtime(rt.clone())
            .build()
            .map(|l| l.gcra())
    };
    assert!(matches!(
        rl(u32::MAX, Duration::from_secs(1), 1),
        Err(ConfigError::OutOfRange { .. })
    ));
    assert!(matches!(
        rl(1, huge, 1),
        Err(ConfigError::DurationOverflow { .. })
    ));
    // A period of u64::MAX ns leaves no room for the state of a burst and the next cell (it
    // used to build and admit the second cell at once): refused; half of it builds.
    assert!(matches!(
        rl(1, max_nanos, 1),
        Err(ConfigError::DurationOverflow { .. })
    ));
    assert!(rl(1, max_nanos / 2, 1).is_ok());
    assert!(matches!(
        rl(1, max_nanos / 2, 2),
        Err(ConfigError::DurationOverflow { .. })
    ));
    assert!(matches!(
        rl(1, Duration::from_secs(1), u32::MAX),
        Err(ConfigError::DurationOverflow { .. }) | Ok(_)
    ));
    let g = rl(1, Duration::from_secs(1), u32::MAX);
    if let Ok(g) = g {
        assert_eq!(g.burst(), u32::MAX);
    }
    assert!(rl(0, Duration::from_secs(1), 1).is_err());
    assert!(rl(1, Duration::ZERO, 1).is_err());
    assert!(rl(1, Duration::from_secs(1), 0).is_err());
    let jitter = RateLimiter::builder(1, Duration::from_secs(1))
        .jitter(Duration::MAX)
        .runtime(rt.clone())
        .build();
    assert!(
        jitter.is_err(),
        "a jitter beyond u64 nanoseconds is refused"
    );

    // Hedge.
    let hedge =
        |b: tidewall::hedge::HedgeBuilder<Clocked<tidewall::rt::Tokio>>| b.build().map(|_| ());
    let hb = || Hedge::builder().runtime(rt.clone());
    assert!(hedge(hb().delay(Duration::MAX)).is_err());
    assert!(hedge(hb().delay(Duration::ZERO)).is_err());
    assert!(hedge(hb().percentile(f64::NAN, 10)).is_err());
    assert!(hedge(hb().percentile(0.0, 10)).is_err());
    assert!(hedge(hb().percentile(1.0, 10)).is_ok());
    assert!(hedge(hb().percentile(0.5, 0)).is_err());
    assert!(hedge(hb().percentile(0.5, u64::MAX)).is_ok());
    assert!(hedge(hb().budget_ratio(1000.0)).is_ok());
    assert!(hedge(hb().budget_ratio(1000.5)).is_err());
    assert!(hedge(hb().budget_ratio(f64::INFINITY)).is_err());
    assert!(hedge(hb().budget_ratio(-0.1)).is_err());
    assert!(hedge(hb().max_hedges(u32::MAX - 1)).is_ok());
    assert!(
        matches!(
            hb().max_hedges(u32::MAX).build(),
            Err(ConfigError::OutOfRange {
                field: "max_hedges",
                ..
            })
        ),
        "attempts (the primary and its hedges) count in a u32"
    );

    // Pipeline.
    let p = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(Duration::MAX)
        .build();
    assert!(
        matches!(p, Err(ConfigError::DurationOverflow { .. })),
        "{p:?}"
    );
    let p = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(Duration::ZERO)
        .build();
    assert!(matches!(p, Err(ConfigError::Zero { .. })), "{p:?}");
    let p = Pipeline::builder()
        .runtime(rt.clone())
        .attempt_timeout(Duration::MAX)
        .build();
    assert!(
        matches!(p, Err(ConfigError::DurationOverflow { .. })),
        "{p:?}"
    );
    let p = Pipeline::builder()
        .runtime(rt.clone())
        .attempt_timeout(Duration::ZERO)
        .build();
    assert!(matches!(p, Err(ConfigError::Zero { .. })), "{p:?}");

    // Retry budget and backoff.
    use tidewall::budget::RetryBudgetPolicy;
    assert!(
        RetryBudgetPolicy::builder()
            .window(Duration::MAX)
            .build()
            .is_err()
    );
    assert!(
        RetryBudgetPolicy::builder()
            .ratio(f64::NAN)
            .build()
            .is_err()
    );
    assert!(
        RetryBudgetPolicy::builder()
            .buckets(u32::MAX)
            .build()
            .is_err()
    );
    assert!(
        RetryBudgetPolicy::builder()
            .min_per_second(u32::MAX)
            .build()
            .is_ok()
    );
    assert!(Backoff::exponential(Duration::MAX).build().is_err());
    assert!(
        Backoff::constant(max_nanos)
            .max_delay(max_nanos)
            .build()
            .is_ok()
    );
    assert!(
        Backoff::exponential(ms(1))
            .factor(f64::INFINITY)
            .build()
            .is_err()
    );
    assert!(Backoff::linear(ms(1), Duration::MAX).build().is_err());
    assert!(
        Backoff::constant(ms(1))
            .max_elapsed(Duration::MAX)
            .build()
            .is_err()
    );
    assert!(
        Backoff::constant(ms(1))
            .max_attempts(u32::MAX)
            .build()
            .is_ok()
    );

    // Keyed limiter: a faithful max_keys or an error (never a wrap).
    for max_keys in [usize::MAX, usize::MAX / 2 + 1, usize::MAX - 1] {
        let limiter = tidewall::rate::KeyedRateLimiter::builder(1, Duration::from_secs(1))
            .max_keys(max_keys)
            .runtime(rt.clone())
            .build::<u64>()
            .unwrap();
        assert_eq!(limiter.max_keys(), max_keys);
    }
}

// Docs (`Bulkhead::available`): "Free slots now, as counted: never more than `capacity` while
// every permit is released exactly once." A bulkhead of usize::MAX in a pipeline still counts.
async fn huge_bulkhead_in_a_pipeline<R: Runtime>(rt: Clocked<R>) {
    let Ok(bulkhead) = Bulkhead::builder(usize::MAX).runtime(rt.clone()).build() else {
        return;
    };
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .bulkhead(bulkhead.clone())
        .build()
        .unwrap();
    let gauge = Gauge::default();
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let (rt, gauge) = (rt.clone(), gauge.clone());
            pipeline.call(move || work(rt.clone(), gauge.clone(), ms(i + 1), false))
        })
        .collect();
    let results = futures_util::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(gauge.most(), 20);
    assert_eq!(bulkhead.available(), usize::MAX);
    assert_eq!(bulkhead.in_flight(), 0);
}

#[test]
fn a_bulkhead_of_usize_max_counts_exactly_in_a_pipeline_on_every_runtime() {
    on_every_runtime!(huge_bulkhead_in_a_pipeline);
}

// Docs (`Clock::sleep`): "A duration too large to add to the clock sleeps 'forever' (about
// 30 years) instead of overflowing." (`Deadline::after`): "saturating far in the future
// instead of overflowing". Retry's `attempt_timeout`, `max_retry_after` and a pipeline's
// `max_retry_after` take any Duration.
async fn unvalidated_huge_durations_do_not_panic<R: Runtime>(rt: Clocked<R>) {
    use tidewall::FutureExt;
    use tidewall::retry::Retry;
    let d = Deadline::after(&rt, Duration::MAX);
    assert!(d.remaining(rt.now()).unwrap() > Duration::from_secs(20 * 365 * 86_400));
    assert_eq!(async { 5 }.timeout_on(&rt, Duration::MAX).await, Ok(5));
    assert_eq!(async { 6 }.deadline_on(&rt, d).await, Ok(6));

    #[derive(Debug, Clone, PartialEq)]
    struct Hinted;
    impl tidewall::RetryAfter for Hinted {
        fn retry_after(&self) -> Option<Duration> {
            Some(Duration::MAX)
        }
    }
    let mut n = 0;
    let r = Retry::new(backoff(2, ms(1)), || {
        n += 1;
        let fail = n == 1;
        async move { if fail { Err(Hinted) } else { Ok(n) } }
    })
    .runtime(rt.clone())
    .attempt_timeout(Duration::MAX)
    .honor_retry_after()
    .max_retry_after(Duration::MAX)
    .await;
    assert_eq!(
        r,
        Ok(2),
        "a hint of Duration::MAX sleeps 'forever', then retries"
    );
    // With a deadline, the hint that ends past it is not slept at all.
    let start = rt.now();
    let r = Retry::new(backoff(2, ms(1)), || async { Err::<(), _>(Hinted) })
        .runtime(rt.clone())
        .honor_retry_after()
        .max_retry_after(Duration::MAX)
        .deadline(d)
        .await;
    assert!(
        matches!(r, Err(tidewall::retry::RetryError::DeadlineExceeded { .. })),
        "{r:?}"
    );
    assert_eq!(rt.now(), start);

    let p = Pipeline::builder()
        .runtime(rt.clone())
        .retry(backoff(2, ms(1)))
        .max_retry_after(Duration::MAX)
        .honor_retry_after()
        .build()
        .unwrap();
    let mut n = 0;
    let start = rt.now();
    let r = p
        .call_before(Deadline::after(&rt, Duration::from_secs(3_600)), || {
            n += 1;
            let fail = n == 1;
            async move { if fail { Err(Hinted) } else { Ok(n) } }
        })
        .await;
    // The hint is longer than the deadline: the retry cannot start before it.
    assert_eq!(r, Err(Error::Inner(Hinted)));
    assert!(rt.now() - start <= Duration::from_secs(3_600));
}

use tidewall::Deadline;

#[test]
fn huge_unvalidated_durations_saturate_instead_of_panicking_on_every_runtime() {
    on_every_runtime!(unvalidated_huge_durations_do_not_panic);
}

// Docs (`PipelineBuilder::build`): "# Errors ... `ConfigError::DurationOverflow` for
// durations beyond `u64` nanoseconds." `min_attempt_time` is one of the builder's durations.
#[test]
fn a_pipeline_min_attempt_time_beyond_u64_nanoseconds_is_refused() {
    let rt = Clocked::new(tidewall::rt::Tokio);
    let p = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(Duration::from_secs(1))
        .min_attempt_time(Duration::MAX)
        .build();
    assert!(
        matches!(p, Err(tidewall::ConfigError::DurationOverflow { .. })),
        "min_attempt_time(Duration::MAX) built: {:?}",
        p.map(|_| ())
    );
}

// A pipeline given the largest min_attempt_time its builder accepts (u64::MAX nanoseconds)
// must not panic when called.
async fn a_huge_min_attempt_time_refuses_without_panicking<R: Runtime>(rt: Clocked<R>) {
    let p = Pipeline::builder()
        .runtime(rt.clone())
        .deadline(Duration::from_secs(1))
        .retry(backoff(3, ms(1)))
        .min_attempt_time(Duration::from_nanos(u64::MAX))
        .build()
        .unwrap();
    let r = p.call(|| async { Ok::<_, ()>(1) }).await;
    assert!(r.is_err() || r == Ok(1), "{r:?}");
}

#[test]
fn a_huge_min_attempt_time_never_panics_on_every_runtime() {
    on_every_runtime!(a_huge_min_attempt_time_refuses_without_panicking);
}

// Docs (pipeline module): "One `Deadline` covers the whole call: the rate limiter's wait, the
// bulkhead queue, every backoff sleep and every attempt count against it". Docs (rate
// module): "over any span `d` it admits at most `burst + floor(d / interval)` cells" and
// (`until_ready`) "GCRA reserves nothing while waiting; dropping the future loses nothing
// and takes no capacity."
async fn pipeline_rate_limit_is_exact_and_calls_keep_their_deadline<R: Runtime>(rt: Clocked<R>) {
    let interval = ms(10);
    let limiter = RateLimiter::builder(100, Duration::from_secs(1))
        .burst(1)
        .runtime(rt.clone())
        .build()
        .unwrap();
    // Wide enough never to queue: an operation then starts at the instant it was admitted.
    let bulkhead = Bulkhead::builder(1_000)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let deadline = ms(150);
    let pipeline = Arc::new(
        Pipeline::builder()
            .runtime(rt.clone())
            .deadline(deadline)
            .rate_limit(limiter)
            .bulkhead(bulkhead.clone())
            .retry(backoff(4, ms(7)))
            .attempt_timeout(ms(30))
            .build()
            .unwrap(),
    );
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let gauge = Gauge::default();
    let mut rng = Rng::new(0xDEAD11);
    let mut handles = Vec::new();
    for _ in 0..200 {
        let (pipeline, gauge, clock, starts) =
            (pipeline.clone(), gauge.clone(), rt.clone(), starts.clone());
        let (d, fail, draw, delay) = (
            ms(rng.below(45)),
            rng.chance(3),
            rng.next(),
            ms(rng.below(900)),
        );
        handles.push(rt.spawn(async move {
            clock.sleep(delay).await;
            let begun = clock.now();
            let mut first = true;
            let (c2, g2) = (clock.clone(), gauge.clone());
            let call = pipeline.call(move || {
                let (clock, gauge) = (&c2, &g2);
                // An operation starts only once the limiter admitted the call: the first
                // attempt's start is an admission (retries are inside the limiter).
                if std::mem::take(&mut first) {
                    starts.lock().unwrap().push(clock.now());
                }
                work(clock.clone(), gauge.clone(), d, fail)
            });
            let r = maybe_cancel(&clock, draw, call).await;
            let took = clock.now() - begun;
            if r.is_some() {
                assert!(
                    took <= deadline,
                    "a call took {took:?} with a deadline of {deadline:?}"
                );
            }
        }));
    }
    let _ = join_with_random_aborts(&rt, &mut rng, handles).await;
    assert_eq!(gauge.now(), 0);
    assert_conserved(&bulkhead);
    let mut starts = starts.lock().unwrap().clone();
    starts.sort();
    assert!(starts.len() > 20, "{} admissions", starts.len());
    for pair in starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= interval,
            "two admissions {:?} apart with burst 1 and an interval of {interval:?}",
            pair[1] - pair[0]
        );
    }
}

#[test]
fn a_pipeline_call_never_outlives_its_deadline_under_random_cancellation_on_every_runtime() {
    on_every_runtime!(pipeline_rate_limit_is_exact_and_calls_keep_their_deadline);
}

// Docs (`AdmitMode::WaitReady` over a `RateLimiter`): "the service is not ready until the
// stage admits" (backpressure). Each request is one cell: n requests from rest take exactly
// `(n - burst) × interval`, whether or not some ready services are dropped unused.
async fn tower_rate_wait_counts_one_cell_per_request<R: Runtime>(rt: Clocked<R>) {
    let limiter = RateLimiter::builder(10, Duration::from_secs(1))
        .burst(1)
        .jitter(Duration::ZERO)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let gauge = Gauge::default();
    let mut svc =
        AdmitLayer::new(limiter.clone(), AdmitMode::WaitReady).layer(sleeper(&rt, &gauge));
    let start = rt.now();
    for _ in 0..10 {
        let s = svc.ready().await.unwrap();
        assert_eq!(s.call(0).await, Ok(0));
    }
    assert_eq!(
        rt.now() - start,
        ms(900),
        "10 requests, burst 1, 100 ms apart"
    );
    // After an idle hour the limiter is rested: one request passes at once.
    rt.sleep(support::HOUR).await;
    let t = rt.now();
    let s = svc.ready().await.unwrap();
    assert_eq!(s.call(2).await, Ok(2));
    assert_eq!(rt.now() - t, ms(2));
}

#[test]
fn a_waiting_tower_rate_limit_spends_one_cell_per_request_on_every_runtime() {
    on_every_runtime!(tower_rate_wait_counts_one_cell_per_request);
}

// Docs (`TimeoutLayer`): "Bounds each request — waiting for the service to be ready *and* the
// call — by `timeout`. The clock starts when `poll_ready` first has to wait for a request (or
// at the call, if the service was ready at once)". Each request gets its own budget, however
// long the service idled in between.
async fn tower_timeout_budget_is_per_request_after_idle_gaps<R: Runtime>(rt: Clocked<R>) {
    // A bulkhead of one in front makes poll_ready wait while another request holds the slot.
    let bulkhead = Bulkhead::builder(1)
        .max_queue(4)
        .max_wait(None)
        .runtime(rt.clone())
        .build()
        .unwrap();
    let gauge = Gauge::default();
    let inner = AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady).layer(sleeper(&rt, &gauge));
    let svc = TimeoutLayer::new(ms(100)).runtime(rt.clone()).layer(inner);
    for gap in support::AGES {
        let hog = bulkhead.try_acquire_owned().unwrap();
        let release = rt.spawn({
            let rt = rt.clone();
            async move {
                rt.sleep(ms(30)).await;
                drop(hog);
            }
        });
        let mut s = svc.clone();
        // 30 ms of readiness, then a 60 ms call: 90 ms in all.
        let ready = s.ready().await.unwrap();
        assert_eq!(ready.call(60).await, Ok(60), "gap {gap:?}");
        release.await.unwrap();
        rt.sleep(gap).await;
        // Ready at once now; a 90 ms call fits in a fresh 100 ms budget.
        let ready = s.ready().await.unwrap();
        assert_eq!(ready.call(90).await, Ok(90), "after an idle gap of {gap:?}");
        rt.sleep(gap).await;
    }
    drop(svc);
    assert_conserved(&bulkhead);
}

#[test]
fn a_tower_timeout_budget_starts_afresh_for_every_request_after_any_gap_on_every_runtime() {
    on_every_runtime!(tower_timeout_budget_is_per_request_after_idle_gaps);
}
