//! Hostile black-box tests of "hints come from the classifier", written from the public docs
//! only: `Classify::retry_after` (`WithRetryAfter` via `honor_retry_after()`, `Hinted` via
//! `retry_after_with(f)`) driven through the four retry fronts — the retry future, the
//! pipeline, the boxed pipeline and the tower `RetryLayer` — which must give the same attempt
//! instants and results. Virtual time (`Clocked`), seeded randomness, every runtime adapter.

mod common;
mod fronts;
mod hints_support;

use common::ms;
use fronts::{Rng, poll_once, secs};
use hints_support::*;
use std::time::Duration;
use tidewall::breaker::State;
use tidewall::bulkhead::Bulkhead;
use tidewall::pipeline::{BoxPipeline, Pipeline};
use tidewall::retry::{Outcome, RetryEvent};
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::{Clocked, Scripted};
use tidewall::tower::{AdmitLayer, AdmitMode, BreakerLayer, RetryLayer};
use tidewall::{Error, RetryExt};
use tower::ServiceExt as _;
use tower_layer::Layer;

async fn hints_matrix<R: Runtime>(rt: Clocked<R>) {
    let mut problems = Vec::new();
    for (c, expected) in matrix() {
        problems.extend(four_fronts(&rt, &c, &expected).await);
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn every_front_waits_the_classifiers_hint_the_same_for_ok_values_and_errors() {
    on_every_runtime!(hints_matrix);
}

// ---------------------------------------------------------------------------------------------
// Builder ordering: "set classify first, as it replaces it"
// ---------------------------------------------------------------------------------------------

async fn ordering<R: Runtime>(rt: Clocked<R>) {
    let backoff = constant(ms(10), 4);
    for first in [Err(Api::Throttled(ms(50))), Ok(RETRY + H50)] {
        let script = vec![now(first), now(Ok(7))];
        let mut seen = Vec::new();
        let op = Scripted::with_latency(rt.clone(), script.clone());
        let r = (|| op.call())
            .retry_on(&rt, backoff)
            .honor_retry_after()
            .classify(judge)
            .await;
        seen.push(("retry future, honor", op.start_offsets(), r.ok()));
        let op = Scripted::with_latency(rt.clone(), script.clone());
        let r = (|| op.call())
            .retry_on(&rt, backoff)
            .retry_after_with(hint_of)
            .classify(judge)
            .await;
        seen.push(("retry future, with", op.start_offsets(), r.ok()));
        let p = Pipeline::builder().runtime(rt.clone()).retry(backoff);
        let honor = p
            .clone()
            .honor_retry_after()
            .classify(judge)
            .build()
            .unwrap();
        let with = p.retry_after_with(hint_of).classify(judge).build().unwrap();
        let op = Scripted::with_latency(rt.clone(), script.clone());
        seen.push((
            "pipeline, honor",
            vec![],
            honor.call(|| op.call()).await.ok(),
        ));
        seen.last_mut().unwrap().1 = op.start_offsets();
        let op = Scripted::with_latency(rt.clone(), script.clone());
        seen.push(("pipeline, with", vec![], with.call(|| op.call()).await.ok()));
        seen.last_mut().unwrap().1 = op.start_offsets();
        let boxed: BoxPipeline<u32, Api> = honor.boxed();
        let op = Scripted::with_latency(rt.clone(), script.clone());
        seen.push((
            "boxed pipeline, honor",
            vec![],
            boxed.call(|| op.call()).await.ok(),
        ));
        seen.last_mut().unwrap().1 = op.start_offsets();
        for with in [false, true] {
            let op = Scripted::with_latency(rt.clone(), script.clone());
            let inner = {
                let op = op.clone();
                tower::service_fn(move |(): ()| {
                    let op = op.clone();
                    async move { op.call().await }
                })
            };
            let layer = RetryLayer::new(backoff).runtime(rt.clone());
            let r = if with {
                layer
                    .retry_after_with(hint_of)
                    .classify(judge)
                    .layer(inner)
                    .oneshot(())
                    .await
            } else {
                layer
                    .honor_retry_after()
                    .classify(judge)
                    .layer(inner)
                    .oneshot(())
                    .await
            };
            seen.push(("tower", op.start_offsets(), r.ok()));
        }
        for (front, starts, result) in seen {
            assert_eq!(
                (starts, result),
                (at(&[0, 10]), Some(7)),
                "{front} ({first:?}): classify(..) after the hint wrapper replaces it, as documented"
            );
        }
    }
}

#[test]
fn classify_set_after_the_hint_wrapper_replaces_it_on_every_front() {
    on_every_runtime!(ordering);
}

// ---------------------------------------------------------------------------------------------
// RetryEvent.hint: "The hint the failed result carried, if any (before capping)"
// ---------------------------------------------------------------------------------------------

async fn notify_hints<R: Runtime>(rt: Clocked<R>) {
    type Event = (u32, bool, Duration, Option<Duration>);
    let script = [
        Ok(RETRY + HOUR),
        Ok(RETRY + H50),
        Err(Api::Busy),
        Err(Api::Throttled(ms(30))),
        Ok(PENDING),
        Ok(7),
    ];
    for mode in [Mode::Errors, Mode::Results] {
        let op = Scripted::new(rt.clone(), script);
        let mut events: Vec<Event> = Vec::new();
        let hook = |e: &RetryEvent<'_, u32, Api>| {
            events.push((
                e.attempt,
                matches!(e.outcome, Outcome::Value(_)),
                e.delay,
                e.hint,
            ));
        };
        let base = (|| op.call())
            .retry_on(&rt, constant(ms(10), 10))
            .classify(judge);
        let r = match mode {
            Mode::Errors => {
                base.honor_retry_after()
                    .max_retry_after(ms(100))
                    .notify(hook)
                    .await
            }
            Mode::Results => {
                base.retry_after_with(hint_of)
                    .max_retry_after(ms(100))
                    .notify(hook)
                    .await
            }
        };
        assert_eq!(r, Ok(7));
        let ok_hints = mode == Mode::Results;
        let expected: Vec<Event> = vec![
            (
                1,
                true,
                if ok_hints { ms(100) } else { ms(10) },
                ok_hints.then_some(secs(3600)),
            ),
            (
                2,
                true,
                if ok_hints { ms(50) } else { ms(10) },
                ok_hints.then_some(ms(50)),
            ),
            (3, false, ms(10), None),
            (4, false, ms(30), Some(ms(30))),
            (5, true, ms(10), None),
        ];
        assert_eq!(
            events, expected,
            "{mode:?}: RetryEvent.hint is the uncapped hint, delay capped"
        );
    }
}

#[test]
fn the_notify_hook_sees_an_ok_values_uncapped_hint_and_the_capped_delay() {
    on_every_runtime!(notify_hints);
}

// ---------------------------------------------------------------------------------------------
// Cancellation mid-hint
// ---------------------------------------------------------------------------------------------

type Call<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

/// Polls `call` and moves time timer by timer until `until`; returns whether it finished.
fn drive_until<R: Runtime>(
    rt: &Clocked<R>,
    call: &mut Call<'_>,
    until: std::time::Instant,
) -> bool {
    loop {
        if poll_once(call.as_mut()).is_ready() {
            return true;
        }
        match rt.clock().next_timer() {
            Some(t) if t <= until => {
                rt.clock().advance_to_next_timer();
            }
            _ => return false,
        }
    }
}

async fn dropped_mid_hint<R: Runtime>(rt: Clocked<R>) {
    let (mut problems, mut dropped) = (Vec::new(), 0);
    for seed in 1..=40u64 {
        let mut rng = Rng::new(seed);
        let script: Vec<_> = (0..12)
            .map(|_| {
                let r = match rng.below(5) {
                    0 => Ok(RETRY + H50),
                    1 => Ok(RETRY + H1S),
                    2 => Err(Api::Throttled(ms(300))),
                    3 => Ok(7),
                    _ => Err(Api::Busy),
                };
                (ms(rng.below(200)), r)
            })
            .collect();
        for front in ["pipeline", "boxed pipeline", "tower"] {
            let bulkhead = Bulkhead::builder(1)
                .runtime(rt.clone())
                .max_queue(4)
                .build()
                .unwrap();
            let b = brk(&rt);
            let _ = b.call(|| async { Err::<(), _>(Api::Busy) }).await;
            rt.clock().advance(secs(1)); // half-open: the call's first attempt is the probe
            let op = Scripted::with_latency(rt.clone(), script.clone());
            let p = Pipeline::builder()
                .runtime(rt.clone())
                .bulkhead(bulkhead.clone());
            let p = p
                .retry(constant(ms(10), 6))
                .breaker(b.clone())
                .classify(judge);
            let pipeline = p.retry_after_with(hint_of).build().unwrap();
            let boxed: BoxPipeline<u32, Api> = pipeline.clone().boxed();
            let tower_stack = RetryLayer::new(constant(ms(10), 6))
                .runtime(rt.clone())
                .classify(judge_typed)
                .retry_after_with(hint_typed)
                .layer(
                    BreakerLayer::new(b.clone()).classify(judge_typed).layer(
                        AdmitLayer::new(bulkhead.clone(), AdmitMode::WaitReady)
                            .layer(service(&op).map_err(Error::Inner)),
                    ),
                );
            let mut call: Call<'_> = match front {
                "pipeline" => Box::pin(async { drop(pipeline.call(|| op.call()).await) }),
                "boxed pipeline" => Box::pin(async { drop(boxed.call(|| op.call()).await) }),
                _ => Box::pin(async { drop(tower_stack.oneshot(()).await) }),
            };
            let stop = rt.now() + ms(rng.below(2500));
            let finished = drive_until(&rt, &mut call, stop);
            drop(call);
            dropped += usize::from(!finished);
            let calls = op.calls();
            let at = format!("seed {seed} {front} (finished: {finished})");
            // "dropping the future releases everything it holds (bulkhead slot, breaker permit)"
            if bulkhead.available() != 1 {
                problems.push(format!("{at}: bulkhead slot held"));
            }
            if rt.clock().pending_timers() != 0 {
                problems.push(format!("{at}: a timer left behind"));
            }
            rt.clock().advance(secs(3600));
            if op.calls() != calls {
                problems.push(format!("{at}: called again after the drop"));
            }
            if b.state() != State::Closed && b.try_acquire().map(|p| p.success()).is_err() {
                problems.push(format!("{at}: probe slot leaked ({:?})", b.state()));
            }
        }
    }
    assert!(dropped > 30, "only {dropped} calls were dropped unfinished");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn dropping_a_call_mid_hint_releases_its_bulkhead_slot_and_breaker_probe_on_every_front() {
    on_every_runtime!(dropped_mid_hint);
}

// ---------------------------------------------------------------------------------------------
// Seeded random scenarios, edges around the deadline: the four fronts agree
// ---------------------------------------------------------------------------------------------

fn pick(rng: &mut Rng, n: usize) -> usize {
    usize::try_from(rng.below(n as u64)).unwrap()
}

fn random_case(rng: &mut Rng) -> Case {
    let mode = if rng.below(2) == 0 {
        Mode::Errors
    } else {
        Mode::Results
    };
    let hint = |rng: &mut Rng| match rng.below(4) {
        0 => HINTS[pick(rng, 8)],
        _ => ms(rng.below(400)),
    };
    let script = (0..6)
        .map(|_| {
            let r = match rng.below(6) {
                0 => Ok(RETRY + u32::try_from(pick(rng, 8)).unwrap()),
                1 => Ok(7),
                2 => Err(Api::Busy),
                3 => Err(Api::Invalid(hint(rng))),
                _ => Err(Api::Throttled(hint(rng))),
            };
            (ms(rng.below(4).saturating_sub(1) * 60), r)
        })
        .collect();
    let choose = |rng: &mut Rng, of: &[Option<Duration>]| of[pick(rng, of.len())];
    let d = [
        None,
        Some(ms(100)),
        Some(ms(300)),
        Some(ms(999)),
        Some(secs(120)),
    ];
    let caps = [
        None,
        Some(Duration::ZERO),
        Some(ms(1)),
        Some(ms(100)),
        Some(Duration::MAX),
    ];
    Case {
        backoff: if rng.below(2) == 0 {
            constant(ms(25), 5)
        } else {
            exponential(ms(10), 5)
        },
        deadline: choose(rng, &d),
        cap: choose(rng, &caps),
        min_attempt_time: ms(rng.below(3) * 20),
        ..case("random", mode, script)
    }
}

async fn random_agreement<R: Runtime>(rt: Clocked<R>) {
    let mut problems = Vec::new();
    let mut cases: Vec<Case> = Vec::new();
    // A hint ending 1 ns before, at, and 1 ns after the deadline, with and without latency.
    for (lat, hint) in [(0, 100), (40, 60), (40, 59), (40, 61)] {
        for nudge in [0u64, 1, 2] {
            let h = ms(hint) + Duration::from_nanos(nudge) - Duration::from_nanos(1);
            for mode in [Mode::Errors, Mode::Results] {
                let r = Err(Api::Throttled(h));
                cases.push(Case {
                    deadline: Some(ms(100)),
                    ..case(
                        &format!("lat {lat} hint {h:?}"),
                        mode,
                        vec![(ms(lat), r), now(Ok(7))],
                    )
                });
            }
        }
    }
    let mut rng = Rng::new(0x5eed);
    cases.extend((0..150).map(|_| random_case(&mut rng)));
    for (n, c) in cases.iter().enumerate() {
        let reference = by_future(&rt, c, &Reads::default()).await;
        // The tower layer's deadline does not cut a running attempt off (documented).
        let cut = c.deadline.is_some() && c.script.iter().any(|(l, _)| !l.is_zero());
        for front in &FRONTS[1..(if cut { 3 } else { 4 })] {
            let mut seen = by_front(&rt, c, front, &Reads::default()).await;
            // Only the retry future reports a cut attempt with the last error (or value) it
            // saw; the pipeline's error type says the deadline ended it: compare the instants.
            if cut && seen.2 == Err(CUT) {
                seen.2 = reference.2;
            }
            if seen != reference {
                problems.push(format!(
                    "case {n} {}: {front} {seen:?} != retry future {reference:?}",
                    c.name
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} disagreements:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn seeded_random_hint_scenarios_give_the_same_attempts_and_results_on_every_front() {
    on_every_runtime!(random_agreement);
}

/// No cap and a `Duration::MAX` hint with no deadline: the retry just waits (no overflow
/// panic, no early retry) until the caller drops it.
async fn endless_hint<R: Runtime>(rt: Clocked<R>) {
    for mode in [Mode::Errors, Mode::Results] {
        for front in FRONTS {
            let c = Case {
                cap: Some(Duration::MAX),
                ..case(
                    "MAX hint, MAX cap",
                    mode,
                    vec![now(Err(Api::Throttled(Duration::MAX))), now(Ok(7))],
                )
            };
            let reads = Reads::default();
            let mut call: Call<'_> =
                Box::pin(async { drop(by_front(&rt, &c, front, &reads).await) });
            let finished = drive_until(&rt, &mut call, rt.now() + secs(86_400 * 365));
            assert!(
                !finished,
                "{front} {mode:?}: retried before a Duration::MAX hint ended"
            );
            drop(call);
        }
    }
}

#[test]
fn an_uncapped_duration_max_hint_waits_without_panicking_on_every_front() {
    on_every_runtime!(endless_hint);
}
