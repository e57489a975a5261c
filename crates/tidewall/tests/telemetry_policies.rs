//! Every policy's metrics as the `telemetry` module documents them: a pipeline's calls by
//! outcome, retries and durations; a breaker's outcomes; a bulkhead's waits; the registry's
//! gauges (a pipeline call's tracing span is tested in `telemetry_pipeline_span`). Each test
//! builds its policies under its own recorder (`metrics::with_local_recorder`: handles are
//! registered when a policy is built), so the tests share no global state. Durations are exact: the clock is paused tokio's.

#![cfg(all(feature = "metrics", feature = "tracing", feature = "toml"))]
// Gauges hold whole counts and histograms durations of whole milliseconds: exact in f64.
#![allow(clippy::float_cmp)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::snapshot::{Series as Metric, select, snapshot};
use tidewall::breaker::{CircuitBreaker, Outcome};
use tidewall::bulkhead::Bulkhead;
use tidewall::config::{Config, Registry};
use tidewall::pipeline::Pipeline;
use tidewall::telemetry::EventKind;
use tidewall::{Backoff, Error, Jitter};

/// One snapshot of a recorder: counters read since the last snapshot (the debugging
/// recorder's counters count from zero again after each), gauges as last set, histograms'
/// values recorded since the last snapshot.
struct Seen(Vec<Metric>);

impl Seen {
    fn now(snapshotter: &Snapshotter) -> Self {
        Self(snapshot(snapshotter))
    }

    /// The metric `name` whose labels include all of `labels`, if registered.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        select(&self.0, name, labels)
            .next()
            .map(|(_, _, value)| value)
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.value(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            other => panic!("{name} {labels:?}: not a registered counter: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.value(name, labels) {
            Some(DebugValue::Gauge(v)) => v.into_inner(),
            other => panic!("{name} {labels:?}: not a registered gauge: {other:?}"),
        }
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.value(name, labels) {
            Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
            other => panic!("{name} {labels:?}: not a registered histogram: {other:?}"),
        }
    }

    fn calls(&self, policy: &str, name: &str, outcome: &str) -> u64 {
        self.counter(
            "tidewall_calls_total",
            &[("policy", policy), ("name", name), ("outcome", outcome)],
        )
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pipeline_counts_each_call_once_by_how_it_ended() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let pipeline = metrics::with_local_recorder(&recorder, || {
        Pipeline::builder()
            .name("prices")
            .retry(
                Backoff::constant(Duration::from_millis(10))
                    .jitter(Jitter::None)
                    .max_attempts(3)
                    .build()
                    .unwrap(),
            )
            .attempt_timeout(Duration::from_millis(100))
            .build()
            .unwrap()
    });
    // Every outcome's counter exists before the first call: a dashboard sees zeros.
    let before = Seen::now(&snapshotter);
    for outcome in [
        "success",
        "failure",
        "ignored",
        "rejected",
        "timed_out",
        "cancelled",
    ] {
        assert_eq!(before.calls("pipeline", "prices", outcome), 0, "{outcome}");
    }

    // A success after two failures: one call, two retries, 2 × 10 ms of backoff.
    let mut failures = 2;
    let flaky = pipeline
        .call(|| {
            let fail = failures > 0;
            failures -= 1;
            async move { if fail { Err("flaky") } else { Ok(1) } }
        })
        .await;
    assert_eq!(flaky, Ok(1));
    // Three failures: the retries run out.
    let failed: Result<u32, _> = pipeline.call(|| async { Err("down") }).await;
    assert_eq!(failed, Err(Error::Inner("down")));
    // Three attempts that each time out after 100 ms.
    let slow: Result<u32, Error<&str>> = pipeline
        .call(|| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(2)
        })
        .await;
    assert_eq!(slow, Err(Error::TimedOut));
    // A call dropped while its attempt runs.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        pipeline.call(|| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, &str>(3)
        }),
    )
    .await;
    assert!(cancelled.is_err());

    let seen = Seen::now(&snapshotter);
    assert_eq!(seen.calls("pipeline", "prices", "success"), 1);
    assert_eq!(seen.calls("pipeline", "prices", "failure"), 1);
    assert_eq!(seen.calls("pipeline", "prices", "timed_out"), 1);
    assert_eq!(seen.calls("pipeline", "prices", "cancelled"), 1);
    assert_eq!(seen.calls("pipeline", "prices", "rejected"), 0);
    let retries = [("policy", "pipeline"), ("name", "prices")];
    assert_eq!(seen.counter("tidewall_retries_total", &retries), 2 + 2 + 2);
    // Durations of the calls that ended, in virtual time: 20 ms, 20 ms, 3 × 100 ms + 20 ms.
    let durations = seen.histogram("tidewall_call_duration_seconds", &retries);
    assert_eq!(durations, vec![0.02, 0.02, 0.32]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_pipeline_counts_refusals_as_rejected_and_verdicts_by_its_classifier() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let bulkhead = Bulkhead::builder(1).reject_when_full().build().unwrap();
    let pipeline = metrics::with_local_recorder(&recorder, || {
        Pipeline::builder()
            .name("orders")
            .bulkhead(bulkhead.clone())
            .classify(|result: Result<&u16, &&str>| match result {
                Ok(status) if *status >= 500 => tidewall::classify::Verdict::Failure,
                Err(_) => tidewall::classify::Verdict::Ignored,
                Ok(_) => tidewall::classify::Verdict::Success,
            })
            .build()
            .unwrap()
    });
    let _held = bulkhead.try_acquire().unwrap();
    let refused = pipeline.call(|| async { Ok::<u16, &str>(200) }).await;
    assert!(matches!(refused, Err(Error::Rejected(_))));
    drop(_held);
    assert_eq!(
        pipeline.call(|| async { Ok::<u16, &str>(503) }).await,
        Ok(503)
    );
    assert_eq!(
        pipeline.call(|| async { Ok::<u16, &str>(200) }).await,
        Ok(200)
    );
    assert_eq!(
        pipeline
            .call(|| async { Err::<u16, &str>("cancelled upstream") })
            .await,
        Err(Error::Inner("cancelled upstream"))
    );

    let seen = Seen::now(&snapshotter);
    assert_eq!(seen.calls("pipeline", "orders", "rejected"), 1);
    assert_eq!(
        seen.calls("pipeline", "orders", "failure"),
        1,
        "a 503 is a failure"
    );
    assert_eq!(seen.calls("pipeline", "orders", "success"), 1);
    assert_eq!(seen.calls("pipeline", "orders", "ignored"), 1);
}

#[test]
fn a_breaker_counts_outcomes_as_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let breaker = metrics::with_local_recorder(&recorder, || {
        CircuitBreaker::builder()
            .name("search")
            .consecutive_failures(100)
            .build()
            .unwrap()
    });
    breaker.try_acquire().unwrap().success();
    breaker.try_acquire().unwrap().success();
    breaker.try_acquire().unwrap().failure();
    breaker.try_acquire().unwrap().record(Outcome::Ignored);
    drop(breaker.try_acquire().unwrap()); // dropped unrecorded: not an outcome
    let seen = Seen::now(&snapshotter);
    assert_eq!(seen.calls("breaker", "search", "success"), 2);
    assert_eq!(seen.calls("breaker", "search", "failure"), 1);
    assert_eq!(seen.calls("breaker", "search", "ignored"), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_bulkhead_times_the_waits_that_queued_and_ended_admitted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let bulkhead = metrics::with_local_recorder(&recorder, || {
        Bulkhead::builder(1)
            .name("db")
            .max_wait(Duration::from_secs(1))
            .build()
            .unwrap()
    });
    let held = bulkhead.acquire().await.unwrap(); // admitted at once: not a wait
    let releaser = async {
        tokio::time::sleep(Duration::from_millis(250)).await;
        drop(held);
    };
    let (waited, ()) = tokio::join!(bulkhead.acquire(), releaser);
    drop(waited.unwrap());
    let held = bulkhead.acquire().await.unwrap();
    let gave_up = bulkhead.acquire().await; // queued 1 s, then refused: not timed
    assert!(gave_up.is_err());
    drop(held);

    let labels = [("policy", "bulkhead"), ("name", "db")];
    assert_eq!(
        Seen::now(&snapshotter).histogram("tidewall_wait_duration_seconds", &labels),
        vec![0.25]
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn registry_gauges_read_every_policy_it_holds() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let config = Config::from_toml(
        r#"
        [instances.api.breaker]
        consecutive_failures = 1
        [instances.api.bulkhead]
        max_concurrent = 4
        [instances.api.rate_limit]
        count = 10
        period = "1s"
        burst = 5
        [instances.api.budget]
        ratio = 0.5
        min_per_second = 0
        "#,
    )
    .unwrap();
    let registry = metrics::with_local_recorder(&recorder, || Registry::new(config).unwrap());
    registry
        .breaker("api")
        .unwrap()
        .try_acquire()
        .unwrap()
        .failure();
    let _held = registry
        .bulkhead("api")
        .unwrap()
        .try_acquire_owned()
        .unwrap();
    registry.rate_limiter("api").unwrap().check_n(2).unwrap();
    let budget = registry.retry_budget("api").unwrap();
    let now = tokio::time::Instant::now().into_std();
    (0..10).for_each(|_| budget.deposit(now));
    assert!(budget.try_withdraw(now));

    metrics::with_local_recorder(&recorder, || registry.record_gauges());
    let seen = Seen::now(&snapshotter);
    let api = [("name", "api")];
    assert_eq!(
        seen.gauge(
            "tidewall_breaker_state",
            &[("name", "api"), ("state", "open")]
        ),
        1.0
    );
    assert_eq!(
        seen.gauge(
            "tidewall_breaker_state",
            &[("name", "api"), ("state", "closed")]
        ),
        0.0
    );
    assert_eq!(seen.gauge("tidewall_bulkhead_in_flight", &api), 1.0);
    assert_eq!(seen.gauge("tidewall_bulkhead_queued", &api), 0.0);
    assert_eq!(seen.gauge("tidewall_bulkhead_capacity", &api), 4.0);
    assert_eq!(seen.gauge("tidewall_rate_limit_available", &api), 3.0);
    assert_eq!(seen.gauge("tidewall_retry_budget_balance", &api), 4.0);

    // Read again later: the limiter has rested, the held permit is back.
    drop(_held);
    tokio::time::sleep(Duration::from_secs(1)).await;
    metrics::with_local_recorder(&recorder, || registry.record_gauges());
    let seen = Seen::now(&snapshotter);
    assert_eq!(seen.gauge("tidewall_bulkhead_in_flight", &api), 0.0);
    assert_eq!(seen.gauge("tidewall_rate_limit_available", &api), 5.0);
}

/// A registry hedge with a budget is gauged with what its budget would grant now; one
/// without a budget has no gauge.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn registry_gauges_read_each_hedge_budget() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let config = Config::from_toml(
        r#"
        [instances.budgeted.hedge]
        delay = "10ms"
        budget_ratio = 0.5
        [instances.free.hedge]
        delay = "10ms"
        "#,
    )
    .unwrap();
    let registry = metrics::with_local_recorder(&recorder, || Registry::new(config).unwrap());
    let budgeted = registry.hedge("budgeted").unwrap();
    let free = registry.hedge("free").unwrap();
    let gauges = || {
        metrics::with_local_recorder(&recorder, || registry.record_gauges());
        Seen::now(&snapshotter)
    };
    let budgeted_gauge =
        |seen: &Seen| seen.gauge("tidewall_hedge_budget_balance", &[("name", "budgeted")]);
    assert_eq!(
        budgeted_gauge(&gauges()),
        0.0,
        "no call yet: nothing to grant"
    );

    // Four calls that answer at once deposit four; half of them may hedge.
    for _ in 0..4 {
        let answer = budgeted
            .call(tidewall::hedge::Idempotent(|| async { Ok::<_, ()>(1) }))
            .await;
        assert_eq!(answer, Ok(1));
    }
    assert_eq!(budgeted.hedge().budget_balance(), Some(2));
    assert_eq!(budgeted_gauge(&gauges()), 2.0);
    // A slow call hedges once, spending one.
    let answer = budgeted
        .call(tidewall::hedge::Idempotent(|| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, ()>(2)
        }))
        .await;
    assert_eq!(answer, Ok(2));
    let seen = gauges();
    assert_eq!(
        budgeted_gauge(&seen),
        budgeted.hedge().budget_balance().unwrap() as f64
    );
    assert!(budgeted_gauge(&seen) < 3.0, "the hedge was paid for");
    assert_eq!(free.hedge().budget_balance(), None);
    assert!(
        seen.value("tidewall_hedge_budget_balance", &[("name", "free")])
            .is_none(),
        "a hedge without a budget is gauged"
    );
}

#[test]
fn reloads_are_counted_applied_or_refused() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let registry = metrics::with_local_recorder(&recorder, || {
        Registry::builder(
            Config::from_toml("[instances.a.bulkhead]\nmax_concurrent = 2\n").unwrap(),
        )
        .runtime(tidewall::testing::FakeClock::new())
        .max_instances(1)
        .build()
        .unwrap()
    });
    let reloads = "tidewall_config_reloads_total";
    // Registered with the registry, before any reload: a dashboard sees both at zero.
    let before = Seen::now(&snapshotter);
    assert_eq!(before.counter(reloads, &[("outcome", "applied")]), 0);
    assert_eq!(before.counter(reloads, &[("outcome", "refused")]), 0);

    registry
        .reload(Config::from_toml("[instances.a.bulkhead]\nmax_concurrent = 3\n").unwrap())
        .unwrap();
    // Valid, but two declared bulkheads do not fit a registry of one.
    let two =
        "[instances.a.bulkhead]\nmax_concurrent = 3\n[instances.b.bulkhead]\nmax_concurrent = 3\n";
    assert!(registry.reload(Config::from_toml(two).unwrap()).is_err());
    // A file that does not parse, and one that cannot be read, are refused reloads too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidewall.toml");
    std::fs::write(&path, "[instances.a.bulkhead]\nmax_concurrent = 0\n").unwrap();
    assert!(registry.reload_file(&path).is_err());
    assert!(
        registry
            .reload_file(dir.path().join("missing.toml"))
            .is_err()
    );
    assert_eq!(
        registry.bulkhead("a").unwrap().capacity(),
        3,
        "the applied one stays"
    );

    let seen = Seen::now(&snapshotter);
    assert_eq!(seen.counter(reloads, &[("outcome", "applied")]), 1);
    assert_eq!(seen.counter(reloads, &[("outcome", "refused")]), 3);
}

/// Every event a listener got, as text.
#[derive(Default, Clone)]
struct Heard(Arc<Mutex<Vec<String>>>);

impl Heard {
    fn listener(&self) -> impl Fn(&tidewall::telemetry::Event<'_>) + Send + Sync + 'static {
        let heard = self.0.clone();
        move |event| {
            let kind = match event.kind {
                EventKind::Rejected(why) => format!("Rejected({})", why.kind()),
                EventKind::StateChanged(change) => {
                    format!("StateChanged({} -> {})", change.from, change.to)
                }
                other => format!("{other:?}"),
            };
            heard
                .lock()
                .unwrap()
                .push(format!("{} {}: {kind}", event.policy, event.name));
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn listeners_hear_every_event_of_their_policy_in_order() {
    let heard = Heard::default();
    let breaker = CircuitBreaker::builder()
        .name("b")
        .consecutive_failures(2)
        .break_duration(Duration::from_secs(1))
        .on_event(heard.listener())
        .build()
        .unwrap();
    let bulkhead = Bulkhead::builder(1)
        .name("h")
        .max_queue(1)
        .max_wait(Duration::from_secs(1))
        .on_event(heard.listener())
        .build()
        .unwrap();
    let budget = tidewall::budget::RetryBudget::new(
        tidewall::budget::RetryBudgetPolicy::builder()
            .ratio(0.0)
            .min_per_second(1)
            .window(Duration::from_secs(1))
            .build()
            .unwrap(),
        tokio::time::Instant::now().into_std(),
    );
    let pipeline = Pipeline::builder()
        .name("p")
        .bulkhead(bulkhead.clone())
        .retry(
            Backoff::constant(Duration::from_millis(10))
                .jitter(Jitter::None)
                .max_attempts(4)
                .build()
                .unwrap(),
        )
        .retry_budget(budget)
        .breaker(breaker.clone())
        .on_event(heard.listener())
        .build()
        .unwrap();

    // The budget's floor grants one retry (one a second over a one-second window) and is
    // then spent; the second failure also opens the breaker.
    let failed: Result<(), _> = pipeline.call(|| async { Err("down") }).await;
    assert_eq!(failed, Err(Error::Inner("down")));
    assert_eq!(
        heard.take(),
        [
            "breaker b: Failed",
            "pipeline p: RetryScheduled { attempt: 1, delay: 10ms }",
            "breaker b: Failed",
            "breaker b: StateChanged(closed -> open)",
            "pipeline p: BudgetExhausted",
            "pipeline p: Failed",
        ]
    );

    // The breaker is open: refused at once, without a retry (the budget is spent).
    let refused: Result<(), Error<&str>> = pipeline.call(|| async { Ok(()) }).await;
    assert!(matches!(refused, Err(Error::Rejected(_))));
    assert_eq!(
        heard.take(),
        [
            "breaker b: Rejected(circuit_open)",
            "pipeline p: BudgetExhausted",
            "pipeline p: Rejected(circuit_open)",
        ]
    );

    // A wait in the bulkhead's queue, a refusal when the queue is full, and a call dropped
    // while it runs.
    breaker.force_closed();
    heard.take();
    let held = bulkhead.try_acquire().unwrap();
    let waiting = tokio::spawn({
        let bulkhead = bulkhead.clone();
        async move { bulkhead.acquire().await.map(drop) }
    });
    tokio::task::yield_now().await;
    assert!(
        bulkhead.acquire().await.is_err(),
        "the queue of one is full"
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    drop(held);
    waiting.await.unwrap().unwrap();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(5),
        pipeline.call(|| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, &str>(())
        }),
    )
    .await;
    assert!(cancelled.is_err());
    assert_eq!(
        heard.take(),
        [
            "bulkhead h: Rejected(bulkhead_full)",
            "bulkhead h: Waited(30ms)",
            "pipeline p: Cancelled",
        ]
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_hedge_counts_and_tells_each_hedge_launched_and_each_its_budget_refused() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let heard = Heard::default();
    let hedge = metrics::with_local_recorder(&recorder, || {
        tidewall::hedge::Hedge::builder()
            .name("replicas")
            .delay(Duration::from_millis(10))
            .max_hedges(3)
            .on_event(heard.listener())
            .build()
            .unwrap()
    });
    // Slower than three delays: all three hedges go out, the primary answers first.
    let slow = hedge
        .call(tidewall::hedge::Idempotent(|| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, ()>(1)
        }))
        .await;
    assert_eq!(slow, Ok(1));
    assert_eq!(
        heard.take(),
        [
            "hedge replicas: HedgeLaunched { hedge: 1 }",
            "hedge replicas: HedgeLaunched { hedge: 2 }",
            "hedge replicas: HedgeLaunched { hedge: 3 }",
            "hedge replicas: Succeeded",
        ]
    );
    // A budget of nothing (ratio 0, no floor): every hedge is refused.
    let stingy = metrics::with_local_recorder(&recorder, || {
        tidewall::hedge::Hedge::builder()
            .name("stingy")
            .delay(Duration::from_millis(10))
            .budget_ratio(0.0)
            .on_event(heard.listener())
            .build()
            .unwrap()
    });
    let alone = stingy
        .call(tidewall::hedge::Idempotent(|| async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            Ok::<_, ()>(2)
        }))
        .await;
    assert_eq!(alone, Ok(2));
    assert_eq!(
        heard.take(),
        ["hedge stingy: BudgetExhausted", "hedge stingy: Succeeded"]
    );
    // Every attempt fails (retryable): the last failure is the answer, one failed call.
    let failing = stingy
        .call(tidewall::hedge::Idempotent(|| async { Err::<u32, _>(()) }))
        .await;
    assert_eq!(failing, Err(()));
    assert_eq!(
        heard.take(),
        ["hedge stingy: BudgetExhausted", "hedge stingy: Failed"]
    );
    // A call dropped before it resolved counts nothing.
    let dropped = stingy.call(tidewall::hedge::Idempotent(|| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, ()>(3)
    }));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), dropped)
            .await
            .is_err()
    );
    assert_eq!(heard.take(), ["hedge stingy: BudgetExhausted"]);

    let seen = Seen::now(&snapshotter);
    let of = |name| [("policy", "hedge"), ("name", name)];
    assert_eq!(seen.counter("tidewall_hedges_total", &of("replicas")), 3);
    assert_eq!(seen.counter("tidewall_hedges_total", &of("stingy")), 0);
    assert_eq!(
        seen.counter("tidewall_retry_budget_exhausted_total", &of("stingy")),
        3
    );
    assert_eq!(seen.calls("hedge", "replicas", "success"), 1);
    assert_eq!(seen.calls("hedge", "stingy", "success"), 1);
    assert_eq!(seen.calls("hedge", "stingy", "failure"), 1);
    assert_eq!(seen.calls("hedge", "stingy", "ignored"), 0);
}
