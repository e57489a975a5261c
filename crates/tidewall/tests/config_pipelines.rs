//! Pipelines from a registry (`Registry::pipeline`): made from an instance's layers on the
//! registry's own policies, and following every reload — deadline, attempt timeout, retry
//! schedule, stages added and removed — while a call already running finishes on the settings
//! it started with. The reload scenario runs on every runtime adapter in virtual time.
#![cfg(all(
    feature = "toml",
    feature = "test-util",
    feature = "smol",
    feature = "async-std"
))]

mod common;

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use common::ms;
use tidewall::breaker::State;
use tidewall::config::{Config, Problem, Registry};
use tidewall::rt::{Clock, Runtime};
use tidewall::telemetry::EventKind;
use tidewall::testing::Clocked;
use tidewall::{Error, Rejected};

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("a valid configuration: {e}\n{text}"))
}

/// A deadline of 250 ms and two attempts 10 ms apart.
const TIGHT: &str = r#"
    [instances.api]
    deadline = "250ms"
    [instances.api.retry]
    backoff = "constant"
    initial_delay = "10ms"
    jitter = "none"
    max_attempts = 2
"#;

/// A deadline of 1 s and four attempts.
const LOOSE: &str = r#"
    [instances.api]
    deadline = "1s"
    [instances.api.retry]
    backoff = "constant"
    initial_delay = "10ms"
    jitter = "none"
    max_attempts = 4
"#;

/// An operation that fails its first `failures` attempts, counting them all.
fn flaky(
    attempts: &AtomicU32,
    failures: u32,
) -> impl FnMut() -> std::future::Ready<Result<u32, &'static str>> + '_ {
    move || {
        let n = attempts.fetch_add(1, SeqCst) + 1;
        std::future::ready(if n <= failures { Err("flaky") } else { Ok(n) })
    }
}

async fn follows_reloads<R: Runtime + Clock>(rt: Clocked<R>) {
    let registry = Registry::builder(config(TIGHT))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let api = registry.pipeline("api").unwrap();
    assert_eq!(api.name(), "api");

    // Under TIGHT: two attempts, then the last failure.
    let attempts = AtomicU32::new(0);
    let failed = api.call(flaky(&attempts, 3)).await;
    assert_eq!(
        (failed, attempts.load(SeqCst)),
        (Err(Error::Inner("flaky")), 2)
    );

    // A call of 300 ms starts under TIGHT; the reload to LOOSE comes 100 ms into it. It ends
    // at its own 250 ms deadline; one started after the reload runs its 300 ms.
    let slow = || {
        let rt = rt.clone();
        move || {
            let rt = rt.clone();
            async move {
                rt.sleep(ms(300)).await;
                Ok::<_, &str>("done")
            }
        }
    };
    let started_before = api.call(slow());
    let reload = async {
        rt.sleep(ms(100)).await;
        registry.reload(config(LOOSE)).unwrap()
    };
    let (before, reload) = futures_util::join!(started_before, reload);
    assert_eq!(before, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(reload.pipelines, 1);
    assert_eq!(api.call(slow()).await, Ok("done"));

    // The retry schedule followed too: four attempts now.
    let attempts = AtomicU32::new(0);
    assert_eq!(api.call(flaky(&attempts, 3)).await, Ok(4));

    // A handle got after the reload is the same pipeline; removing the retry section removes
    // the stage for every handle.
    let again = registry.pipeline("api").unwrap();
    registry
        .reload(config("[instances.api]\ndeadline = \"1s\"\n"))
        .unwrap();
    for handle in [&api, &again] {
        let attempts = AtomicU32::new(0);
        let once = handle.call(flaky(&attempts, 1)).await;
        assert_eq!(
            (once, attempts.load(SeqCst)),
            (Err(Error::Inner("flaky")), 1)
        );
    }
}

#[test]
fn a_pipeline_follows_reloads_on_every_runtime() {
    on_every_runtime!(follows_reloads);
}

#[tokio::test(start_paused = true)]
async fn stages_are_the_registrys_policies_and_come_and_go_with_their_sections() {
    let registry = Registry::new(config(
        r#"
        [instances.db.bulkhead]
        max_concurrent = 1
        max_queue = 0
        [instances.db.breaker]
        consecutive_failures = 2
        "#,
    ))
    .unwrap();
    let db = registry.pipeline("db").unwrap();
    // The pipeline's bulkhead is the registry's: a permit held outside fills it.
    let held = registry
        .bulkhead("db")
        .unwrap()
        .try_acquire_owned()
        .unwrap();
    let refused = db.call(|| async { Ok::<_, ()>(()) }).await;
    assert_eq!(refused, Err(Error::Rejected(Rejected::BulkheadFull)));
    drop(held);
    // Its breaker is the registry's: two failures through the pipeline open it.
    for _ in 0..2 {
        let _ = db.call(|| async { Err::<(), _>("down") }).await;
    }
    assert_eq!(registry.breaker("db").unwrap().state(), State::Open);

    // Without the sections the stages are gone: nothing refuses, nothing is counted. (The
    // registry keeps its bulkhead, on the defaults: a reload that left it without a
    // `max_concurrent` would be refused.)
    registry
        .reload(config(
            "[defaults.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n[instances.db]\ndeadline = \"1s\"\n",
        ))
        .unwrap();
    let held = registry
        .bulkhead("db")
        .unwrap()
        .try_acquire_owned()
        .unwrap();
    assert_eq!(db.call(|| async { Ok::<_, ()>(7) }).await, Ok(7));
    drop(held);
    // A rate limit added by a reload is made, held by the registry, and used.
    registry
        .reload(config(
            "[defaults.bulkhead]\nmax_concurrent = 1\n[instances.db.rate_limit]\ncount = 1\nperiod = \"1h\"\nburst = 1\n",
        ))
        .unwrap();
    assert_eq!(db.call(|| async { Ok::<_, ()>(1) }).await, Ok(1));
    assert_eq!(registry.rate_limiter("db").unwrap().available(), 0);
    // With no deadline the limiter would wait an hour: bound the call instead.
    let deadline = tidewall::Deadline::after(&tidewall::rt::Tokio, ms(10));
    let limited = db.call_before(deadline, || async { Ok::<_, ()>(2) }).await;
    assert_eq!(limited, Err(Error::Rejected(Rejected::DeadlineExceeded)));
}

#[tokio::test(start_paused = true)]
async fn a_refused_reload_leaves_every_pipeline_as_it_was() {
    let registry = Registry::new(config(TIGHT)).unwrap();
    let api = registry.pipeline("api").unwrap();
    let refused = registry
        .reload(config(LOOSE).clone_with_deadline_zero())
        .unwrap_err();
    assert_eq!(refused.path(), "instances.api.deadline");
    assert!(matches!(refused.problem(), Problem::Rule(_)), "{refused}");
    // Still TIGHT: two attempts, 250 ms.
    let attempts = AtomicU32::new(0);
    let _ = api.call(flaky(&attempts, 5)).await;
    assert_eq!(attempts.load(SeqCst), 2);
    let slow = api
        .call(|| async {
            tokio::time::sleep(ms(300)).await;
            Ok::<_, ()>(())
        })
        .await;
    assert_eq!(slow, Err(Error::Rejected(Rejected::DeadlineExceeded)));
}

/// A configuration's text with the instance's deadline made zero, which no builder accepts.
trait DeadlineZero {
    fn clone_with_deadline_zero(&self) -> Config;
}

impl DeadlineZero for Config {
    fn clone_with_deadline_zero(&self) -> Config {
        let mut zero = self.clone();
        let api = zero.instances.get_mut("api").expect("the instance");
        api.deadline = Some(tidewall::config::Toggle::On(std::time::Duration::ZERO));
        zero
    }
}

#[test]
fn a_zero_deadline_or_attempt_timeout_is_refused_at_its_key() {
    for (text, path) in [
        ("[defaults]\ndeadline = \"0s\"\n", "defaults.deadline"),
        (
            "[instances.a]\nattempt_timeout = \"0ms\"\n",
            "instances.a.attempt_timeout",
        ),
        (
            "[configs.base]\ndeadline = \"0s\"\n[instances.a]\nbase = \"base\"\n",
            "configs.base.deadline",
        ),
    ] {
        let refused = Config::from_toml(text).unwrap_err();
        assert_eq!(refused.path(), path, "{text}");
        assert!(refused.to_string().contains("zero"), "{refused}");
    }
    // "off" over a zero below it is not the zero: the layer above decides.
    Config::from_toml(
        "[configs.b]\ndeadline = \"5s\"\n[instances.a]\nbase = \"b\"\ndeadline = \"off\"\n",
    )
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_handle_keeps_its_classifier_across_reloads() {
    let registry = Registry::new(config(TIGHT)).unwrap();
    // A 404 is an answer, not a failure: never retried.
    let api =
        registry
            .pipeline("api")
            .unwrap()
            .classify(|result: Result<&u16, &&str>| match result {
                Ok(404) | Ok(200) => tidewall::classify::Verdict::Success,
                _ => tidewall::classify::Verdict::RetryableFailure,
            });
    registry.reload(config(LOOSE)).unwrap();
    let calls = AtomicU32::new(0);
    let answer = api
        .call(|| {
            calls.fetch_add(1, SeqCst);
            async { Ok::<u16, &str>(404) }
        })
        .await;
    assert_eq!((answer, calls.load(SeqCst)), (Ok(404), 1));
    let calls = AtomicU32::new(0);
    let _ = api
        .call(|| {
            calls.fetch_add(1, SeqCst);
            async { Ok::<u16, &str>(503) }
        })
        .await;
    assert_eq!(calls.load(SeqCst), 4, "LOOSE's four attempts");
}

#[tokio::test(start_paused = true)]
async fn pipelines_are_listed_bounded_and_named_as_asked() {
    let registry = Registry::builder(config(&format!("{TIGHT}\n[instances.\"api.v2\"]\n")))
        .max_instances(2)
        .build()
        .unwrap();
    registry.pipeline("api").unwrap();
    registry.pipeline("api.v2").unwrap();
    let names: Vec<_> = registry
        .pipelines()
        .into_iter()
        .map(|(name, pipeline)| (name.to_string(), pipeline.name().to_string()))
        .collect();
    assert_eq!(
        names,
        [("api", "api"), ("api.v2", "api.v2")].map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    // Only declared instances get a pipeline, each in a place of its own: a name the file
    // does not declare is refused as such, not as a full registry.
    let undeclared = registry.pipeline("third").unwrap_err();
    assert_eq!(undeclared.path(), "instances.third");
    assert_eq!(undeclared.problem(), &Problem::Undeclared);
    assert_eq!(registry.pipelines().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn one_listener_hears_every_policy_and_pipeline_of_the_registry() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let registry = Registry::builder(config(
        r#"
        [instances.db.bulkhead]
        max_concurrent = 1
        max_queue = 0
        [instances.db.retry]
        max_attempts = 2
        initial_delay = "1ms"
        "#,
    ))
    .on_event(move |event| {
        let what = match event.kind {
            EventKind::Rejected(why) => format!("rejected {}", why.kind()),
            EventKind::RetryScheduled { attempt, .. } => format!("retry {attempt}"),
            EventKind::Failed => "failed".to_owned(),
            EventKind::Succeeded => "succeeded".to_owned(),
            _ => return,
        };
        log.lock()
            .unwrap()
            .push(format!("{} {}: {what}", event.policy, event.name));
    })
    .build()
    .unwrap();
    let db = registry.pipeline("db").unwrap();
    let attempts = AtomicU32::new(0);
    assert_eq!(db.call(flaky(&attempts, 1)).await, Ok(2));
    let held = registry
        .bulkhead("db")
        .unwrap()
        .try_acquire_owned()
        .unwrap();
    let _ = db.call(|| async { Ok::<_, ()>(()) }).await;
    drop(held);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "pipeline db: retry 1",
            "pipeline db: succeeded",
            "bulkhead db: rejected bulkhead_full",
            "pipeline db: rejected bulkhead_full",
        ]
    );
}
