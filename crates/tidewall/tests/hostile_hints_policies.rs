//! Hostile black-box tests of classifier hints together with other policies, written from
//! the public docs only: a retry budget (only retries taken withdraw, refills after idle
//! hours), a breaker's own refusal hint beside the classifier's, and calls dropped mid-hint
//! (bulkhead slots and breaker probes come back). Virtual time, every runtime adapter.

mod common;
mod fronts;
mod hints_support;

use common::ms;
use fronts::secs;
use hints_support::*;
use std::time::Duration;
use tidewall::Error;
use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
use tidewall::pipeline::{BoxPipeline, Pipeline};
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::{Clocked, Scripted};
use tidewall::tower::{BreakerLayer, RetryLayer};
use tower::ServiceExt as _;
use tower_layer::Layer;

// ---------------------------------------------------------------------------------------------
// Budget: "only a retry that is taken withdraws from the budget"
// ---------------------------------------------------------------------------------------------

fn budget<R: Runtime>(rt: &Clocked<R>) -> RetryBudget {
    let policy = RetryBudgetPolicy::builder()
        .ratio(1.0)
        .min_per_second(0)
        .build()
        .unwrap();
    RetryBudget::new(policy, rt.now())
}

async fn hints_with_budget<R: Runtime>(rt: Clocked<R>) {
    let mut problems = Vec::new();
    let hinted = [
        (Mode::Errors, Err(Api::Throttled(ms(50)))),
        (Mode::Results, Err(Api::Throttled(ms(50)))),
        (Mode::Results, Ok(RETRY + H50)),
    ];
    for (mode, first) in hinted {
        for front in FRONTS {
            let reads = Reads::default();
            // One call deposits one retry (ratio 1): the hinted retry takes it, then it is spent.
            let b = budget(&rt);
            let c = Case {
                budget: Some(b.clone()),
                ..case("budget", mode, vec![now(first)])
            };
            let expected = (at(&[0, 50]), ms(50), first);
            for round in ["fresh", "after three idle hours"] {
                let seen = by_front(&rt, &c, front, &reads).await;
                if seen != expected {
                    problems.push(format!(
                        "{front} {mode:?} {round}: {seen:?} != {expected:?}"
                    ));
                }
                if b.has_balance(rt.now()) {
                    problems.push(format!("{front} {mode:?} {round}: budget not spent"));
                }
                rt.clock().advance(secs(3 * 3600));
            }
            // A retry not taken (its whole hint ends past the deadline) withdraws nothing.
            let b = budget(&rt);
            let long = Err(Api::Throttled(secs(3600)));
            let script = vec![now(if first.is_ok() {
                Ok(RETRY + HOUR)
            } else {
                long
            })];
            let c = Case {
                budget: Some(b.clone()),
                deadline: Some(secs(1)),
                ..case("budget, hint past deadline", mode, script.clone())
            };
            let seen = by_front(&rt, &c, front, &reads).await;
            if seen != (at(&[0]), ms(0), script[0].1) {
                problems.push(format!("{front} {mode:?} past deadline: {seen:?}"));
            }
            if !b.has_balance(rt.now()) {
                problems.push(format!("{front} {mode:?}: a retry not taken withdrew"));
            }
            rt.clock().advance(secs(3600));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_hinted_retry_draws_from_the_budget_only_when_taken_and_a_budget_refills_after_idle_hours() {
    on_every_runtime!(hints_with_budget);
}

// ---------------------------------------------------------------------------------------------
// The breaker's rejection hint with a classifier hint
// ---------------------------------------------------------------------------------------------

/// (pipeline | boxed | tower, op starts, end, result as text)
async fn breaker_fronts<R: Runtime>(
    rt: &Clocked<R>,
    mode: Mode,
    cap: Duration,
    script: &[Result<u32, Api>],
) -> Vec<(&'static str, Vec<Duration>, Duration, String)> {
    let backoff = constant(ms(10), 4);
    let mut out = Vec::new();
    for front in ["pipeline", "boxed pipeline", "tower"] {
        let op = Scripted::new(rt.clone(), script.to_vec());
        let b = brk(rt);
        let start = rt.now();
        let r = if front == "tower" {
            let stack = BreakerLayer::new(b)
                .classify(judge_typed)
                .layer(service(&op).map_err(Error::Inner));
            let layer = RetryLayer::new(backoff)
                .runtime(rt.clone())
                .classify(judge_typed);
            match mode {
                Mode::Errors => {
                    let l = layer.honor_retry_after().max_retry_after(cap);
                    l.layer(stack).oneshot(()).await
                }
                Mode::Results => {
                    let l = layer.retry_after_with(hint_typed).max_retry_after(cap);
                    l.layer(stack).oneshot(()).await
                }
            }
        } else {
            let p = Pipeline::builder().runtime(rt.clone()).retry(backoff);
            let p = p.max_retry_after(cap).breaker(b).classify(judge);
            let boxed: BoxPipeline<u32, Api> = match mode {
                Mode::Errors => p.honor_retry_after().build().unwrap().boxed(),
                Mode::Results => p.retry_after_with(hint_of).build().unwrap().boxed(),
            };
            boxed.call(|| op.call()).await
        };
        out.push((
            front,
            op.start_offsets(),
            rt.now() - start,
            format!("{r:?}"),
        ));
        rt.clock().advance(secs(3600));
    }
    out
}

/// (mode, cap, script, op starts in ms, end in ms, result as text)
type BreakerCase = (
    Mode,
    Duration,
    Vec<Result<u32, Api>>,
    &'static [u64],
    u64,
    &'static str,
);

async fn breaker_and_classifier_hints<R: Runtime>(rt: Clocked<R>) {
    let long = DEFAULT_CAP;
    let cases: Vec<BreakerCase> = vec![
        // A 50 ms hint opens a 1 s break: the retry at 50 ms is refused with the rest of the
        // break, which is waited out; the probe at 1 s succeeds.
        (
            Mode::Errors,
            long,
            vec![Err(Api::Throttled(ms(50))), Ok(7)],
            &[0, 1000],
            1000,
            "Ok(7)",
        ),
        (
            Mode::Results,
            long,
            vec![Ok(RETRY + H50), Ok(7)],
            &[0, 1000],
            1000,
            "Ok(7)",
        ),
        // A classifier hint longer than the break wins.
        (
            Mode::Errors,
            long,
            vec![Err(Api::Throttled(secs(2))), Ok(7)],
            &[0, 2000],
            2000,
            "Ok(7)",
        ),
        (
            Mode::Results,
            long,
            vec![Ok(RETRY + H1S), Ok(7)],
            &[0, 1000],
            1000,
            "Ok(7)",
        ),
        // A zero hint: the schedule, then the break.
        (
            Mode::Results,
            long,
            vec![Ok(RETRY + H0), Ok(7)],
            &[0, 1000],
            1000,
            "Ok(7)",
        ),
    ];
    for (mode, cap, script, starts, end, result) in cases {
        for (front, seen_starts, seen_end, seen) in breaker_fronts(&rt, mode, cap, &script).await {
            assert_eq!(
                (seen_starts, seen_end, seen.as_str()),
                (at(starts), ms(end), result),
                "{front} {mode:?} {script:?}: a rejection's retry_after is waited out"
            );
        }
    }
    // A cap shorter than the break: refused again each 100 ms until the attempts run out
    // (documented: "the breaker then refuses it again"); every front agrees.
    for mode in [Mode::Errors, Mode::Results] {
        let seen = breaker_fronts(&rt, mode, ms(100), &[Err(Api::Throttled(ms(50))), Ok(7)]).await;
        for (front, starts, end, r) in &seen {
            assert_eq!(
                (starts, *end),
                (&at(&[0]), ms(250)),
                "{front} {mode:?}: {r}"
            );
            assert!(r.contains("CircuitOpen"), "{front} {mode:?}: {r}");
        }
    }
}

const DEFAULT_CAP: Duration = tidewall::retry::DEFAULT_MAX_RETRY_AFTER;

#[test]
fn a_breakers_refusal_hint_and_a_classifier_hint_give_the_same_waits_on_every_front() {
    on_every_runtime!(breaker_and_classifier_hints);
}
