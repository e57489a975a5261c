#![cfg(all(feature = "toml", feature = "tokio", feature = "test-util"))]
//! Hostile black-box tests of pipelines from configuration (`Registry::pipeline`,
//! `LivePipeline`, `ConfiguredPipeline`), the registry-wide listener (`RegistryBuilder::on_event`),
//! the `Option` stages, and the validation of the call-wide keys, written from the rustdoc
//! alone. Time is virtual (paused tokio time, or a `FakeClock` runtime) and randomness seeded,
//! except in the one multi-thread stress test, which asserts only invariants.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::future::join_all;
use tidewall::admission::{Admission, Wait};
use tidewall::breaker::State;
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::Verdict;
use tidewall::config::{
    Config, ConfiguredPipeline, LivePipeline, Policies, Problem, Registry, Toggle,
};
use tidewall::pipeline::Pipeline;
use tidewall::rate::RateLimiter;
use tidewall::rt::{Clock, Tokio};
use tidewall::telemetry::{Event, EventKind};
use tidewall::testing::FakeClock;
use tidewall::{ConfigError, Deadline, Error, Rejected};
use tidewall_core::rng::SplitMix64;
use tokio::time::{Instant, sleep};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const HOUR: Duration = Duration::from_secs(3600);

fn cfg(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("must be accepted: {e}\n---\n{text}"))
}

fn registry(text: &str) -> Registry {
    Registry::new(cfg(text)).unwrap_or_else(|e| panic!("registry refused: {e}\n---\n{text}"))
}

fn on_clock(clock: &FakeClock, text: &str) -> Registry<FakeClock> {
    Registry::builder(cfg(text))
        .runtime(clock.clone())
        .build()
        .unwrap_or_else(|e| panic!("registry refused: {e}\n---\n{text}"))
}

/// The layer `name` of `config` to change in code (past what `Config::from_toml` would let
/// through, so that `reload` itself has to refuse it).
fn instance<'a>(config: &'a mut Config, name: &str) -> &'a mut Policies {
    config.instances.entry(name.into()).or_default()
}

fn zero() -> Option<Toggle<Duration>> {
    Some(Toggle::On(Duration::ZERO))
}

/// Seeded draws from the library's own generator: every run draws the same numbers.
struct Rng(SplitMix64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed))
    }
    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.0.below_or_equal(n - 1)
    }
    fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).expect("below len")
    }
}

type R<T> = Result<T, Error<&'static str>>;

fn deadline_exceeded<T: std::fmt::Debug>(r: &R<T>) -> bool {
    matches!(r, Err(Error::Rejected(Rejected::DeadlineExceeded)))
}

fn circuit_open<T: std::fmt::Debug>(r: &R<T>) -> bool {
    matches!(r, Err(Error::Rejected(Rejected::CircuitOpen { .. })))
}

fn bulkhead_full<T: std::fmt::Debug>(r: &R<T>) -> bool {
    matches!(r, Err(Error::Rejected(Rejected::BulkheadFull)))
}

/// One event as heard: the policy, the instance name, and the kind in short.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Heard {
    policy: &'static str,
    name: String,
    kind: String,
}

/// A listener that keeps everything it hears.
#[derive(Default, Clone)]
struct Ear(Arc<Mutex<Vec<Heard>>>);

impl Ear {
    fn listener(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let heard = Arc::clone(&self.0);
        move |event: &Event<'_>| {
            let kind = match event.kind {
                EventKind::Rejected(why) => format!("Rejected({})", why.kind()),
                EventKind::StateChanged(c) => format!("StateChanged({}->{})", c.from, c.to),
                EventKind::RetryScheduled { attempt, delay, .. } => {
                    format!("RetryScheduled({attempt},{delay:?})")
                }
                EventKind::Waited(_) => "Waited".to_owned(),
                other => format!("{other:?}"),
            };
            heard.lock().unwrap().push(Heard {
                policy: event.policy,
                name: event.name.to_owned(),
                kind,
            });
        }
    }

    fn take(&self) -> Vec<Heard> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

fn count(heard: &[Heard], policy: &str, name: &str, kind_prefix: &str) -> usize {
    heard
        .iter()
        .filter(|h| h.policy == policy && h.name == name && h.kind.starts_with(kind_prefix))
        .count()
}

/// Counts ops running at once (a guard, so an op dropped mid-way is counted out too).
#[derive(Default, Clone)]
struct Running {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
}

struct RunningGuard(Arc<AtomicUsize>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

impl Running {
    fn enter(&self) -> RunningGuard {
        self.started.fetch_add(1, SeqCst);
        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(now, SeqCst);
        RunningGuard(Arc::clone(&self.now))
    }
}

/// Drives `fut` on a `FakeClock`, jumping to each timer in turn; the virtual time it took.
async fn drive<F: Future>(clock: &FakeClock, fut: F) -> (F::Output, Duration) {
    let start = clock.now();
    let mut fut = pin!(fut);
    for _ in 0..100_000 {
        if let Poll::Ready(out) = futures_util::poll!(fut.as_mut()) {
            return (out, clock.now() - start);
        }
        assert!(
            clock.advance_to_next_timer(),
            "the call is pending with no timer to wake it: stuck"
        );
    }
    panic!("the call never finished");
}

fn retry_text(name: &str, delay_ms: u64, attempts: u32) -> String {
    format!(
        "[instances.{name}.retry]\nbackoff = \"constant\"\ninitial_delay = \"{delay_ms}ms\"\njitter = \"none\"\nmax_attempts = {attempts}\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Deadline, attempt timeout, min_attempt_time and retry schedule follow reloads
// ---------------------------------------------------------------------------------------------

/// Doc (LivePipeline): "A reload makes the pipeline anew from the new configuration: ...
/// every call after it runs on the new ones, and every handle sees the change."
#[tokio::test(start_paused = true)]
async fn a_reload_reaches_a_handle_got_before_it_and_removes_the_retry_stage() {
    let registry = registry(&format!(
        "[instances.payments]\ndeadline = \"1s\"\n{}",
        retry_text("payments", 100, 3)
    ));
    let payments = registry.pipeline("payments").unwrap();
    assert_eq!(payments.name(), "payments");

    let start = Instant::now();
    let mut attempts = 0;
    let paid = payments
        .call(|| {
            attempts += 1;
            let fail = attempts < 3;
            async move { if fail { Err("busy") } else { Ok("paid") } }
        })
        .await;
    assert_eq!((paid, attempts), (Ok("paid"), 3));
    assert_eq!(
        start.elapsed(),
        ms(200),
        "two constant 100 ms sleeps, no jitter"
    );

    let reload = registry
        .reload(cfg("[instances.payments]\ndeadline = \"50ms\"\n"))
        .unwrap();
    assert_eq!(reload.pipelines, 1);

    let start = Instant::now();
    let slow = payments
        .call(|| async {
            sleep(ms(200)).await;
            Ok::<_, &str>("late")
        })
        .await;
    assert_eq!(slow, Err(Error::Rejected(Rejected::DeadlineExceeded)));
    assert_eq!(start.elapsed(), ms(50));

    // The retry section is gone: a failure is returned as it is, after one attempt.
    let mut attempts = 0;
    let once: R<()> = payments
        .call(|| {
            attempts += 1;
            async { Err("busy") }
        })
        .await;
    assert_eq!((once, attempts), (Err(Error::Inner("busy")), 1));
}

/// Doc: "a call started before it finishes on the settings it started with".
#[tokio::test(start_paused = true)]
async fn a_call_in_flight_keeps_the_deadline_it_started_with_both_ways() {
    let registry = registry("[instances.a]\ndeadline = \"1s\"\n");
    let live = registry.pipeline("a").unwrap();

    // Longer before, shorter after: the call in flight keeps its 1 s.
    let started_long = async {
        let start = Instant::now();
        let r = live
            .call(|| async {
                sleep(ms(500)).await;
                Ok::<_, &str>(1)
            })
            .await;
        (r, start.elapsed())
    };
    let reloader = async {
        sleep(ms(100)).await;
        registry
            .reload(cfg("[instances.a]\ndeadline = \"50ms\"\n"))
            .unwrap();
        let start = Instant::now();
        let r = live
            .call(|| async {
                sleep(ms(500)).await;
                Ok::<_, &str>(2)
            })
            .await;
        (r, start.elapsed())
    };
    let ((old, old_took), (new, new_took)) = tokio::join!(started_long, reloader);
    assert_eq!(
        (old, old_took),
        (Ok(1), ms(500)),
        "started under the 1 s deadline"
    );
    assert!(deadline_exceeded(&new), "{new:?}");
    assert_eq!(new_took, ms(50));

    // Shorter before, longer after: the call in flight is still cut at 50 ms.
    let started_short = async {
        let start = Instant::now();
        let r = live
            .call(|| async {
                sleep(ms(300)).await;
                Ok::<_, &str>(3)
            })
            .await;
        (r, start.elapsed())
    };
    let lengthen = async {
        sleep(ms(10)).await;
        registry
            .reload(cfg("[instances.a]\ndeadline = \"10s\"\n"))
            .unwrap();
    };
    let ((r, took), ()) = tokio::join!(started_short, lengthen);
    assert!(deadline_exceeded(&r), "{r:?}");
    assert_eq!(took, ms(50), "the deadline it started with");

    // And after it, the 10 s deadline is in force.
    let r = live
        .call(|| async {
            sleep(ms(300)).await;
            Ok::<_, &str>(4)
        })
        .await;
    assert_eq!(r, Ok(4));
    a_future_made_before_a_reload_and_first_polled_after_runs_on_the_new_settings().await;
}

#[tokio::test(start_paused = true)]
async fn the_attempt_timeout_follows_every_reload_and_not_the_call_in_flight() {
    let registry = registry("[instances.a]\nattempt_timeout = \"100ms\"\n");
    let live = registry.pipeline("a").unwrap();
    let op = || async {
        sleep(ms(150)).await;
        Ok::<_, &str>("done")
    };

    let start = Instant::now();
    assert_eq!(live.call(op).await, Err(Error::TimedOut));
    assert_eq!(start.elapsed(), ms(100));

    for (text, expected, took) in [
        ("attempt_timeout = \"off\"", Ok("done"), ms(150)),
        ("", Ok("done"), ms(150)),
        ("attempt_timeout = \"200ms\"", Ok("done"), ms(150)),
        ("attempt_timeout = \"50ms\"", Err(Error::TimedOut), ms(50)),
    ] {
        registry
            .reload(cfg(&format!("[instances.a]\n{text}\n")))
            .unwrap();
        let start = Instant::now();
        assert_eq!(live.call(op).await, expected, "under `{text}`");
        assert_eq!(start.elapsed(), took, "under `{text}`");
    }

    // A call in flight keeps its 50 ms although the timeout is turned off meanwhile.
    let in_flight = async {
        let start = Instant::now();
        (live.call(op).await, start.elapsed())
    };
    let turn_off = async {
        sleep(ms(10)).await;
        registry
            .reload(cfg("[instances.a]\nattempt_timeout = \"off\"\n"))
            .unwrap();
    };
    let ((r, took), ()) = tokio::join!(in_flight, turn_off);
    assert_eq!((r, took), (Err(Error::TimedOut), ms(50)));
    assert_eq!(live.call(op).await, Ok("done"));
    the_earlier_of_deadline_and_attempt_timeout_decides_the_error_after_each_reload().await;
}

#[tokio::test(start_paused = true)]
async fn the_retry_schedule_follows_every_reload() {
    let registry = registry(&retry_text("a", 100, 2));
    let live = registry.pipeline("a").unwrap();

    async fn failures(live: &LivePipeline) -> (usize, Duration) {
        let start = Instant::now();
        let mut attempts = 0;
        let r: R<()> = live
            .call(|| {
                attempts += 1;
                async { Err("down") }
            })
            .await;
        assert_eq!(r, Err(Error::Inner("down")));
        (attempts, start.elapsed())
    }

    assert_eq!(failures(&live).await, (2, ms(100)));
    registry.reload(cfg(&retry_text("a", 100, 5))).unwrap();
    assert_eq!(failures(&live).await, (5, ms(400)));
    registry.reload(cfg(&retry_text("a", 10, 3))).unwrap();
    assert_eq!(failures(&live).await, (3, ms(20)));
    registry
        .reload(cfg(
            "[instances.a.retry]\nbackoff = \"linear\"\ninitial_delay = \"10ms\"\nstep = \"20ms\"\njitter = \"none\"\nmax_attempts = 3\n",
        ))
        .unwrap();
    assert_eq!(failures(&live).await, (3, ms(40)), "10 ms, then 10 + 20 ms");
    registry.reload(cfg("[instances.a]\n")).unwrap();
    assert_eq!(
        failures(&live).await,
        (1, Duration::ZERO),
        "no retry section, no retry"
    );
    registry.reload(cfg(&retry_text("a", 100, 4))).unwrap();
    assert_eq!(failures(&live).await, (4, ms(300)), "the stage comes back");
    the_retry_after_cap_follows_reloads().await;
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_keeps_its_retry_schedule_across_a_reload() {
    let registry = registry(&retry_text("a", 100, 5));
    let live = registry.pipeline("a").unwrap();

    let attempts = AtomicUsize::new(0);
    let in_flight = async {
        let start = Instant::now();
        let r: R<()> = live
            .call(|| {
                attempts.fetch_add(1, SeqCst);
                async { Err("down") }
            })
            .await;
        (r, start.elapsed())
    };
    let remove_retry = async {
        sleep(ms(150)).await;
        registry.reload(cfg("[instances.a]\n")).unwrap();
    };
    let ((r, took), ()) = tokio::join!(in_flight, remove_retry);
    assert_eq!(r, Err(Error::Inner("down")));
    assert_eq!(
        (attempts.load(SeqCst), took),
        (5, ms(400)),
        "the call started with five attempts 100 ms apart"
    );

    // And the other way: two attempts at the start, ten after the reload.
    registry.reload(cfg(&retry_text("a", 100, 2))).unwrap();
    attempts.store(0, SeqCst);
    let in_flight = async {
        let r: R<()> = live
            .call(|| {
                attempts.fetch_add(1, SeqCst);
                async { Err("down") }
            })
            .await;
        r
    };
    let grow_retry = async {
        sleep(ms(50)).await;
        registry.reload(cfg(&retry_text("a", 100, 10))).unwrap();
    };
    let (r, ()) = tokio::join!(in_flight, grow_retry);
    assert_eq!(r, Err(Error::Inner("down")));
    assert_eq!(attempts.load(SeqCst), 2);
}

/// Doc (PipelineBuilder::min_attempt_time): "Starts an attempt (or a retry's sleep) only if
/// more than this much time would be left for it before the deadline: every retry, and the
/// first attempt once the call ... brought its own deadline (call_before)."
#[tokio::test(start_paused = true)]
async fn min_attempt_time_follows_reloads() {
    let text = |min: &str| {
        format!(
            "[instances.a]\ndeadline = \"1s\"\nmin_attempt_time = \"{min}\"\n{}",
            retry_text("a", 300, 10)
        )
    };
    let registry = registry(&text("0s"));
    let live = registry.pipeline("a").unwrap();

    async fn attempts_until_out(live: &LivePipeline) -> usize {
        let mut attempts = 0;
        let r: R<()> = live
            .call(|| {
                attempts += 1;
                async { Err("down") }
            })
            .await;
        assert_eq!(
            r,
            Err(Error::Inner("down")),
            "a retry that cannot start returns the last failure"
        );
        attempts
    }

    // Attempts at 0, 300, 600, 900 ms; one at 1200 ms cannot start.
    assert_eq!(attempts_until_out(&live).await, 4);
    registry.reload(cfg(&text("200ms"))).unwrap();
    // At 900 ms only 100 ms would be left: fewer than 200.
    assert_eq!(attempts_until_out(&live).await, 3);
    registry.reload(cfg(&text("0s"))).unwrap();
    assert_eq!(attempts_until_out(&live).await, 4);

    // With the caller's own deadline, the first attempt needs the minimum too.
    registry.reload(cfg(&text("200ms"))).unwrap();
    let ran = AtomicBool::new(false);
    let r: R<()> = live
        .call_before(Deadline::after(&Tokio, ms(150)), || {
            ran.store(true, SeqCst);
            async { Ok(()) }
        })
        .await;
    assert!(
        !ran.load(SeqCst),
        "150 ms left is less than min_attempt_time 200 ms: no attempt starts ({r:?})"
    );
    assert!(deadline_exceeded(&r), "{r:?}");
    registry.reload(cfg(&text("0s"))).unwrap();
    let r: R<()> = live
        .call_before(Deadline::after(&Tokio, ms(150)), || async { Ok(()) })
        .await;
    assert_eq!(r, Ok(()));

    // A minimum longer than the whole deadline is accepted; "A first attempt that waited for
    // nothing starts at once, with the pipeline's whole deadline before it ... whatever this
    // minimum" — and no retry fits.
    registry.reload(cfg(&text("10s"))).unwrap();
    assert_eq!(attempts_until_out(&live).await, 1);
}

#[tokio::test(start_paused = true)]
async fn call_before_keeps_the_earlier_of_the_caller_and_the_configured_deadline() {
    let registry = registry("[instances.a]\ndeadline = \"1s\"\n");
    let live = registry.pipeline("a").unwrap();
    let op = || async {
        sleep(ms(500)).await;
        Ok::<_, &str>(7)
    };
    for (deadline, caller, expected_took, ok) in [
        ("deadline = \"1s\"", Some(100), 100, false),
        ("deadline = \"50ms\"", Some(100), 50, false),
        ("deadline = \"off\"", Some(100), 100, false),
        ("deadline = \"off\"", None, 500, true),
        ("deadline = \"200ms\"", None, 200, false),
    ] {
        registry
            .reload(cfg(&format!("[instances.a]\n{deadline}\n")))
            .unwrap();
        let by = caller.map_or(Deadline::none(), |c| Deadline::after(&Tokio, ms(c)));
        let start = Instant::now();
        let r = live.call_before(by, op).await;
        assert_eq!(
            start.elapsed(),
            ms(expected_took),
            "{deadline} / {caller:?}"
        );
        if ok {
            assert_eq!(r, Ok(7));
        } else {
            assert!(deadline_exceeded(&r), "{deadline} / {caller:?}: {r:?}");
        }
    }

    // A caller's deadline already passed: no attempt starts (nothing is left for it).
    let ran = AtomicBool::new(false);
    let passed = Deadline::after(&Tokio, ms(10));
    sleep(ms(20)).await;
    let r: R<()> = live
        .call_before(passed, || {
            ran.store(true, SeqCst);
            async { Ok(()) }
        })
        .await;
    assert!(deadline_exceeded(&r), "{r:?}");
    assert!(
        !ran.load(SeqCst),
        "an attempt started past the caller's deadline"
    );
}

/// Doc (Registry::reload): "A reload that removes the instance of a pipeline or HTTP client
/// the registry holds ... is refused with Problem::Removed: the calls through it would lose
/// every stage"; "Nothing changes then". Policies "of instances it no longer declares are
/// kept, on the layers that remain (the defaults, say), and named in Reload::removed"; the
/// instance kept declared with no section: a pipeline of no stages, following the defaults.
async fn a_reload_cannot_remove_a_held_pipelines_instance_but_can_empty_it() {
    let registry = registry(
        "[defaults]\nattempt_timeout = \"300ms\"\n[instances.a]\ndeadline = \"50ms\"\n[instances.a.breaker]\nconsecutive_failures = 1\nbreak_duration = \"1h\"\n[instances.c.breaker]\n",
    );
    let live = registry.pipeline("a").unwrap();
    let before = live.pipeline();
    let _: R<()> = live.call(|| async { Err("down") }).await;
    assert_eq!(registry.breaker("a").unwrap().state(), State::Open);

    // Removing a, whose pipeline is held: refused, and nothing of it applies.
    let err = registry
        .reload(cfg(
            "[defaults]\nattempt_timeout = \"300ms\"\n[instances.b]\ndeadline = \"1s\"\n[instances.c.breaker]\n",
        ))
        .expect_err("a held pipeline's instance removed");
    assert_eq!(
        (err.path(), err.problem()),
        ("instances.a", &Problem::Removed),
        "{err}"
    );
    assert!(
        Arc::ptr_eq(&before, &live.pipeline()),
        "a refused reload made the pipeline anew"
    );
    let config = registry.config();
    assert!(
        config.instances.contains_key("a") && !config.instances.contains_key("b"),
        "the refused configuration was put in force"
    );
    assert!(
        registry.breakers().iter().all(|(n, _)| n != "b"),
        "the refused reload built b"
    );
    assert_eq!(registry.breaker("a").unwrap().state(), State::Open);
    let r = live.call(|| async { Ok::<_, &str>(0) }).await;
    assert!(
        circuit_open(&r),
        "the breaker stage is still in force: {r:?}"
    );

    // a kept declared with no section; c, whose breaker alone is held, removed.
    let reload = registry
        .reload(cfg(
            "[defaults]\nattempt_timeout = \"300ms\"\n[instances.a]\n[instances.b]\ndeadline = \"1s\"\n",
        ))
        .unwrap();
    assert_eq!(reload.pipelines, 1);
    assert_eq!(
        reload
            .removed
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["c"],
        "{reload:?}"
    );
    assert!(registry.breakers().iter().any(|(n, _)| n == "a"), "kept");
    assert!(registry.breakers().iter().any(|(n, _)| n == "c"), "kept");
    let r = live
        .call(|| async {
            sleep(ms(200)).await;
            Ok::<_, &str>(1)
        })
        .await;
    assert_eq!(r, Ok(1), "no breaker stage, no 50 ms deadline any more");
    let start = Instant::now();
    let r = live
        .call(|| async {
            sleep(secs(1)).await;
            Ok::<_, &str>(2)
        })
        .await;
    assert_eq!(
        (r, start.elapsed()),
        (Err(Error::TimedOut), ms(300)),
        "the defaults' timeout"
    );
}

// ---------------------------------------------------------------------------------------------
// Stages added and removed
// ---------------------------------------------------------------------------------------------

/// Runs `n` calls at once, each holding the op for `hold`; their results.
async fn concurrently<K>(live: &LivePipeline<Tokio, K>, n: usize, hold: Duration) -> Vec<R<usize>>
where
    K: tidewall::classify::Classify<usize, &'static str>,
{
    join_all((0..n).map(|i| {
        live.call(move || async move {
            sleep(hold).await;
            Ok(i)
        })
    }))
    .await
}

/// Doc: "A reload that adds or removes a section adds or removes the stage." The bulkhead's
/// `max_concurrent` comes from the defaults, so removing the instance's section is valid.
#[tokio::test(start_paused = true)]
async fn a_reload_adds_and_removes_the_bulkhead_stage() {
    let defaults = "[defaults.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n";
    let without = format!("{defaults}[instances.a]\ndeadline = \"10s\"\n");
    let with = format!("{defaults}[instances.a]\ndeadline = \"10s\"\nbulkhead = {{}}\n");
    let registry = registry(&without);
    let live = registry.pipeline("a").unwrap();

    let results = concurrently(&live, 3, ms(100)).await;
    assert!(
        results.iter().all(Result::is_ok),
        "no stage yet: {results:?}"
    );

    let reload = registry.reload(cfg(&with)).unwrap();
    assert_eq!(reload.pipelines, 1);
    let results = concurrently(&live, 3, ms(100)).await;
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    assert_eq!(
        results.iter().filter(|r| bulkhead_full(r)).count(),
        2,
        "{results:?}"
    );
    let bulkhead = registry.bulkhead("a").unwrap();
    assert_eq!(bulkhead.capacity(), 1);

    // A call holds the slot while the section is removed: it keeps it to its end; calls
    // after the reload take no slot at all.
    let holder = async {
        live.call(|| async {
            sleep(ms(200)).await;
            Ok::<_, &str>(0usize)
        })
        .await
    };
    let remover = async {
        sleep(ms(50)).await;
        assert_eq!(bulkhead.in_flight(), 1);
        registry.reload(cfg(&without)).unwrap();
        assert_eq!(
            bulkhead.in_flight(),
            1,
            "the call in flight keeps its permit"
        );
        let results = concurrently(&live, 3, ms(20)).await;
        assert!(
            results.iter().all(Result::is_ok),
            "stage removed: {results:?}"
        );
        results
    };
    let (held, _) = tokio::join!(holder, remover);
    assert_eq!(held, Ok(0));
    assert_eq!(bulkhead.in_flight(), 0);
    let results = concurrently(&live, 3, ms(10)).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
}

/// Doc (Registry::reload): "an invalid configuration (or one under which a policy the
/// registry holds could not be built, such as a bulkhead whose `max_concurrent` was only in a
/// section now removed) is refused with its error, and the old one stays in force, whole."
#[tokio::test(start_paused = true)]
async fn removing_a_bulkhead_section_that_alone_set_max_concurrent_is_refused_whole() {
    let old = "[instances.a]\ndeadline = \"100ms\"\n[instances.a.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n";
    let registry = registry(old);
    let live = registry.pipeline("a").unwrap();
    let before = live.pipeline();

    let err = registry
        .reload(cfg("[instances.a]\ndeadline = \"10s\"\n"))
        .expect_err("the held bulkhead could not be built any more");
    assert_eq!(err.problem(), &Problem::Missing, "{err}");
    assert!(
        Arc::ptr_eq(&before, &live.pipeline()),
        "the pipeline was not remade"
    );
    assert_eq!(*registry.config(), cfg(old));

    // The old pipeline whole: the bulkhead stage and the 100 ms deadline.
    let results = concurrently(&live, 2, ms(50)).await;
    assert_eq!(
        results.iter().filter(|r| bulkhead_full(r)).count(),
        1,
        "{results:?}"
    );
    let start = Instant::now();
    let r = live
        .call(|| async {
            sleep(secs(1)).await;
            Ok::<_, &str>(0)
        })
        .await;
    assert!(deadline_exceeded(&r), "{r:?}");
    assert_eq!(start.elapsed(), ms(100));
}

#[tokio::test(start_paused = true)]
async fn a_reload_adds_and_removes_the_rate_limit_stage() {
    let defaults = "[defaults.rate_limit]\ncount = 1\nperiod = \"1h\"\n";
    let without = format!("{defaults}[instances.a]\ndeadline = \"1s\"\n");
    let with = format!("{defaults}[instances.a]\ndeadline = \"1s\"\nrate_limit = {{}}\n");
    let registry = registry(&without);
    let live = registry.pipeline("a").unwrap();
    for i in 0..5 {
        assert_eq!(live.call(|| async { Ok::<_, &str>(i) }).await, Ok(i));
    }

    registry.reload(cfg(&with)).unwrap();
    assert_eq!(live.call(|| async { Ok::<_, &str>(1) }).await, Ok(1));
    let start = Instant::now();
    let ran = AtomicBool::new(false);
    let refused = live
        .call(|| {
            ran.store(true, SeqCst);
            async { Ok::<_, &str>(2) }
        })
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::Rejected(
                Rejected::DeadlineExceeded | Rejected::RateLimited { .. }
            ))
        ),
        "the next cell is an hour away, past the 1 s deadline: {refused:?}"
    );
    assert!(!ran.load(SeqCst));
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "known to end past it: refused at once"
    );

    registry.reload(cfg(&without)).unwrap();
    for i in 0..5 {
        assert_eq!(
            live.call(|| async { Ok::<_, &str>(i) }).await,
            Ok(i),
            "stage removed"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_adds_and_removes_the_retry_budget() {
    let retry = retry_text("a", 10, 5);
    let with = format!("{retry}[instances.a.budget]\nratio = 0\nmin_per_second = 0\n");
    let registry = registry(&with);
    let live = registry.pipeline("a").unwrap();

    async fn attempts(live: &LivePipeline) -> usize {
        let mut n = 0;
        let r: R<()> = live
            .call(|| {
                n += 1;
                async { Err("down") }
            })
            .await;
        assert!(r.is_err());
        n
    }
    assert_eq!(
        attempts(&live).await,
        1,
        "a budget of nothing grants no retry"
    );
    registry.reload(cfg(&retry)).unwrap();
    assert_eq!(attempts(&live).await, 5, "budget removed");
    registry.reload(cfg(&with)).unwrap();
    assert_eq!(attempts(&live).await, 1, "budget back");
    let generous = format!("{retry}[instances.a.budget]\nratio = 1000\nmin_per_second = 1000\n");
    registry.reload(cfg(&generous)).unwrap();
    assert_eq!(attempts(&live).await, 5, "budget retuned");
    the_pipelines_retry_budget_is_the_registrys().await;
}

/// A declared instance of no section: a pipeline of no stages (the defaults only fill
/// sections in), bounded by the defaults' deadline and attempt timeout — and a reload that
/// gives it a section adds the stage. Registry::pipeline: "A name the file does not declare is
/// refused (it would get a pipeline of no stage), and so is a reload that removes this one's
/// instance (Problem::Removed)".
#[tokio::test(start_paused = true)]
async fn a_declared_instance_without_sections_gets_no_stages_and_follows_the_defaults() {
    let registry = registry(
        "[defaults]\ndeadline = \"100ms\"\nattempt_timeout = \"50ms\"\n[defaults.breaker]\nconsecutive_failures = 1\n[defaults.retry]\nmax_attempts = 3\n[instances.ghost]\n",
    );
    // A name the file does not declare gets no pipeline, and takes no place.
    let typo = registry.pipeline("gohst").expect_err("an undeclared name");
    assert_eq!(
        (typo.path(), typo.problem()),
        ("instances.gohst", &Problem::Undeclared),
        "{typo}"
    );
    assert!(
        registry.pipelines().is_empty(),
        "a refused name took a place"
    );
    assert!(
        registry.breakers().iter().all(|(name, _)| name != "gohst"),
        "a refused name made a breaker"
    );

    let ghost = registry.pipeline("ghost").unwrap();
    let start = Instant::now();
    let r = ghost
        .call(|| async {
            sleep(ms(70)).await;
            Ok::<_, &str>(1)
        })
        .await;
    assert_eq!(
        (r, start.elapsed()),
        (Err(Error::TimedOut), ms(50)),
        "no retry stage"
    );

    for _ in 0..5 {
        let mut ran = false;
        let r: R<()> = ghost
            .call(|| {
                ran = true;
                async { Err("down") }
            })
            .await;
        assert!(ran, "no breaker stage may refuse it");
        assert_eq!(r, Err(Error::Inner("down")));
    }
    assert!(
        registry.breakers().iter().all(|(name, _)| name != "ghost"),
        "a pipeline of no stages made a breaker"
    );

    // A reload no longer declaring ghost, whose pipeline is held: refused, nothing applies.
    let err = registry
        .reload(cfg(
            "[defaults]\ndeadline = \"30ms\"\nattempt_timeout = \"50ms\"\n",
        ))
        .expect_err("ghost's pipeline is held");
    assert_eq!(
        (err.path(), err.problem()),
        ("instances.ghost", &Problem::Removed),
        "{err}"
    );
    let start = Instant::now();
    let r = ghost
        .call(|| async {
            sleep(ms(70)).await;
            Ok::<_, &str>(1)
        })
        .await;
    assert_eq!(
        (r, start.elapsed()),
        (Err(Error::TimedOut), ms(50)),
        "the refused reload's 30 ms deadline applied"
    );

    registry
        .reload(cfg(
            "[defaults]\ndeadline = \"30ms\"\nattempt_timeout = \"50ms\"\n[instances.ghost]\n",
        ))
        .unwrap();
    let start = Instant::now();
    let r = ghost
        .call(|| async {
            sleep(ms(70)).await;
            Ok::<_, &str>(1)
        })
        .await;
    assert!(deadline_exceeded(&r), "{r:?}");
    assert_eq!(start.elapsed(), ms(30), "the defaults' new deadline");

    let reload = registry
        .reload(cfg(
            "[instances.ghost.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n",
        ))
        .unwrap();
    assert_eq!(reload.pipelines, 1);
    assert_eq!(
        reload.built, 1,
        "ghost's bulkhead, new with its section: {reload:?}"
    );
    let results = concurrently(&ghost, 2, ms(10)).await;
    assert_eq!(
        results.iter().filter(|r| bulkhead_full(r)).count(),
        1,
        "{results:?}"
    );
    a_reload_cannot_remove_a_held_pipelines_instance_but_can_empty_it().await;
}

// ---------------------------------------------------------------------------------------------
// The breaker, shared
// ---------------------------------------------------------------------------------------------

/// Doc: "Its stages are the registry's policies of the same name (so a breaker opened through
/// the pipeline is open for Registry::breaker too)".
#[tokio::test(start_paused = true)]
async fn the_breaker_is_the_registrys_both_ways() {
    let registry =
        registry("[instances.a.breaker]\nconsecutive_failures = 2\nbreak_duration = \"10s\"\n");
    let before = registry.breaker("a").unwrap();
    let live = registry.pipeline("a").unwrap();
    for _ in 0..2 {
        let r: R<()> = live.call(|| async { Err("down") }).await;
        assert_eq!(r, Err(Error::Inner("down")));
    }
    assert_eq!(before.state(), State::Open);
    assert_eq!(registry.breaker("a").unwrap().state(), State::Open);

    let mut ran = false;
    let r: R<()> = live
        .call(|| {
            ran = true;
            async { Ok(()) }
        })
        .await;
    assert!(circuit_open(&r) && !ran, "{r:?}");

    // Forced closed through the registry's handle: the pipeline passes everything and
    // nothing trips it.
    before.force_closed();
    assert_eq!(live.call(|| async { Ok::<_, &str>(1) }).await, Ok(1));
    for _ in 0..3 {
        let r: R<()> = live.call(|| async { Err("down") }).await;
        assert_eq!(r, Err(Error::Inner("down")));
    }
    assert_eq!(before.state(), State::ForcedClosed);
    registry.breaker("a").unwrap().force_open();
    let r = live.call(|| async { Ok::<_, &str>(2) }).await;
    assert!(circuit_open(&r), "{r:?}");
    before.reset();
    assert_eq!(before.state(), State::Closed);

    // Open it again through the pipeline; after the break a probe goes through and closes it.
    for _ in 0..2 {
        let _: R<()> = live.call(|| async { Err("down") }).await;
    }
    assert_eq!(before.state(), State::Open);
    sleep(secs(11)).await;
    assert_eq!(live.call(|| async { Ok::<_, &str>(3) }).await, Ok(3));
    assert_eq!(before.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_stays_open_across_a_reload_that_keeps_its_shape_and_resets_otherwise() {
    let ear = Ear::default();
    let text = |extra: &str| {
        format!("[instances.a.breaker]\nconsecutive_failures = 1\nbreak_duration = \"{extra}\"\n")
    };
    let registry = Registry::builder(cfg(&text("1h")))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let live = registry.pipeline("a").unwrap();
    let _: R<()> = live.call(|| async { Err("down") }).await;
    assert_eq!(registry.breaker("a").unwrap().state(), State::Open);

    let reload = registry.reload(cfg(&text("2h"))).unwrap();
    assert!(reload.reset.is_empty(), "{reload:?}");
    assert_eq!(reload.pipelines, 1);
    let r = live.call(|| async { Ok::<_, &str>(1) }).await;
    assert!(circuit_open(&r), "the state was kept: {r:?}");

    ear.take();
    let reload = registry
        .reload(cfg(&format!("{}window_calls = 20\n", text("2h"))))
        .unwrap();
    assert_eq!(reload.reset, vec![tidewall::Name::from("a")]);
    let heard = ear.take();
    assert_eq!(
        count(&heard, "breaker", "a", "StateChanged(open->closed)"),
        1,
        "{heard:?}"
    );
    assert_eq!(
        live.call(|| async { Ok::<_, &str>(2) }).await,
        Ok(2),
        "reset to closed"
    );
}

#[tokio::test(start_paused = true)]
async fn removing_and_readding_the_breaker_section_keeps_pipeline_and_registry_consistent() {
    let with = "[instances.a]\ndeadline = \"5s\"\n[instances.a.breaker]\nconsecutive_failures = 1\nbreak_duration = \"1h\"\n";
    let without = "[instances.a]\ndeadline = \"5s\"\n";
    let registry = registry(with);
    let breaker = registry.breaker("a").unwrap();
    let live = registry.pipeline("a").unwrap();
    let _: R<()> = live.call(|| async { Err("down") }).await;
    assert_eq!(breaker.state(), State::Open);

    registry.reload(cfg(without)).unwrap();
    for i in 0..3 {
        let mut ran = false;
        let r = live
            .call(|| {
                ran = true;
                async move { Ok::<_, &str>(i) }
            })
            .await;
        assert_eq!((r, ran), (Ok(i), true), "no breaker stage any more");
    }

    registry.reload(cfg(with)).unwrap();
    let open = breaker.state() == State::Open;
    let mut ran = false;
    let r = live
        .call(|| {
            ran = true;
            async { Ok::<_, &str>(9) }
        })
        .await;
    assert_eq!(
        circuit_open(&r),
        open,
        "the pipeline's breaker must be the registry's (state {:?}): {r:?}",
        breaker.state()
    );
    assert_eq!(ran, !open);
}

// ---------------------------------------------------------------------------------------------
// Handles: classifier, clones, identity, counts, listing
// ---------------------------------------------------------------------------------------------

/// Doc (classify): "The handle keeps it across reloads; other handles keep theirs."
#[tokio::test(start_paused = true)]
async fn a_classifier_is_kept_across_reloads_by_its_handle_only() {
    let registry = registry(&retry_text("a", 10, 3));
    let plain = registry.pipeline("a").unwrap();
    let strict =
        registry
            .pipeline("a")
            .unwrap()
            .classify(|r: Result<&u32, &&'static str>| match r {
                Ok(_) => Verdict::Success,
                Err(_) => Verdict::Failure,
            });

    async fn attempts<K>(live: &LivePipeline<Tokio, K>) -> usize
    where
        K: tidewall::classify::Classify<u32, &'static str>,
    {
        let mut n = 0;
        let r: R<u32> = live
            .call(|| {
                n += 1;
                async { Err("bad request") }
            })
            .await;
        assert_eq!(r, Err(Error::Inner("bad request")));
        n
    }
    assert_eq!((attempts(&strict).await, attempts(&plain).await), (1, 3));
    registry.reload(cfg(&retry_text("a", 10, 5))).unwrap();
    assert_eq!((attempts(&strict).await, attempts(&plain).await), (1, 5));
    let strict_clone = strict.clone();
    registry.reload(cfg(&retry_text("a", 10, 4))).unwrap();
    assert_eq!(
        attempts(&strict_clone).await,
        1,
        "a clone keeps the classifier"
    );
    assert_eq!(
        attempts(&registry.pipeline("a").unwrap()).await,
        4,
        "a new handle does not"
    );
}

#[tokio::test(start_paused = true)]
async fn an_ignoring_classifier_keeps_the_shared_breaker_closed_across_reloads() {
    let text = |n: u32| {
        format!(
            "{}[instances.a.breaker]\nconsecutive_failures = {n}\n",
            retry_text("a", 10, 2)
        )
    };
    let registry = registry(&text(1));
    let quiet = registry
        .pipeline("a")
        .unwrap()
        .classify(|r: Result<&(), &&'static str>| match r {
            Ok(_) => Verdict::Success,
            Err(_) => Verdict::Ignored,
        });
    for round in 0..4 {
        for _ in 0..3 {
            let r = quiet.call(|| async { Err("cancelled") }).await;
            assert_eq!(r, Err(Error::Inner("cancelled")));
        }
        assert_eq!(
            registry.breaker("a").unwrap().state(),
            State::Closed,
            "round {round}: ignored results count for nothing"
        );
        registry.reload(cfg(&text(1 + round))).unwrap();
    }
    // The default classifier, by another handle, does count.
    registry.reload(cfg(&text(1))).unwrap();
    let _: R<()> = registry
        .pipeline("a")
        .unwrap()
        .call(|| async { Err("down") })
        .await;
    assert_eq!(registry.breaker("a").unwrap().state(), State::Open);
}

/// Doc: "every handle sees the change"; `pipeline()`: "The pipeline in force now (the next
/// reload replaces it; this one stays usable)."
#[tokio::test(start_paused = true)]
async fn handles_cloned_before_and_after_a_reload_share_the_pipeline_in_force() {
    let registry = registry("[instances.a]\ndeadline = \"1s\"\n");
    let h1 = registry.pipeline("a").unwrap();
    let h2 = h1.clone();
    let old: Arc<ConfiguredPipeline> = h1.pipeline();
    assert!(Arc::ptr_eq(&old, &h2.pipeline()));
    assert!(Arc::ptr_eq(
        &old,
        &registry.pipeline("a").unwrap().pipeline()
    ));
    assert_eq!(old.name(), "a", "the registry names it after its instance");

    registry
        .reload(cfg("[instances.a]\ndeadline = \"50ms\"\n"))
        .unwrap();
    let h3 = registry.pipeline("a").unwrap();
    let h4 = h2.clone();
    let now = h3.pipeline();
    assert!(
        !Arc::ptr_eq(&old, &now),
        "the reload made the pipeline anew"
    );
    for (i, h) in [&h1, &h2, &h3, &h4].into_iter().enumerate() {
        assert!(Arc::ptr_eq(&h.pipeline(), &now), "handle {i}");
        let start = Instant::now();
        let r = h
            .call(|| async {
                sleep(ms(200)).await;
                Ok::<_, &str>(i)
            })
            .await;
        assert!(deadline_exceeded(&r), "handle {i}: {r:?}");
        assert_eq!(start.elapsed(), ms(50), "handle {i}");
    }
    // The replaced pipeline stays usable, on its own settings.
    let r = old
        .call(|| async {
            sleep(ms(200)).await;
            Ok::<_, &str>(9)
        })
        .await;
    assert_eq!(r, Ok(9));
    assert!(format!("{h1:?}").contains('a'));
}

/// `ghost` is declared with no key: its pipeline follows the defaults' attempt timeout. A
/// name the file does not declare gets no pipeline (Problem::Undeclared) and is not listed;
/// a reload no longer declaring a held pipeline's instance is refused (Problem::Removed).
#[tokio::test(start_paused = true)]
async fn reload_counts_the_pipelines_made_anew_and_pipelines_lists_every_one_got() {
    let text = |d: u32| {
        format!(
            "[instances.a]\ndeadline = \"{d}s\"\n[instances.b]\ndeadline = \"{d}s\"\n[instances.\"api.v2\"]\ndeadline = \"{d}s\"\n[instances.unused]\ndeadline = \"{d}s\"\n[instances.ghost]\n[defaults]\nattempt_timeout = \"{d}s\"\n"
        )
    };
    let registry = registry(&text(1));
    assert!(registry.pipelines().is_empty(), "none got yet");
    assert_eq!(registry.reload(cfg(&text(2))).unwrap().pipelines, 0);

    let _a = registry.pipeline("a").unwrap();
    let _a2 = registry.pipeline("a").unwrap();
    let _v2 = registry.pipeline("api.v2").unwrap();
    let _ghost = registry.pipeline("ghost").unwrap();
    let typo = registry.pipeline("gohst").expect_err("an undeclared name");
    assert_eq!(
        (typo.path(), typo.problem()),
        ("instances.gohst", &Problem::Undeclared),
        "{typo}"
    );
    let names: BTreeSet<String> = registry
        .pipelines()
        .into_iter()
        .map(|(name, live)| {
            assert_eq!(name, live.name());
            name.to_string()
        })
        .collect();
    assert_eq!(
        names,
        ["a", "api.v2", "ghost"].map(String::from).into(),
        "every pipeline got so far (a declared instance never asked for is not one, a name \
         refused is not one)"
    );
    assert_eq!(
        registry.pipelines().len(),
        3,
        "a name got twice is one pipeline"
    );

    let reload = registry.reload(cfg(&text(3))).unwrap();
    assert_eq!(reload.pipelines, 3);
    let mut bad = cfg(&text(9));
    instance(&mut bad, "a").deadline = zero();
    registry.reload(bad).expect_err("zero deadline");
    let reload = registry.reload(cfg(&text(4))).unwrap();
    assert_eq!(reload.pipelines, 3);
    // No longer declaring ghost, whose pipeline is held: refused, and nothing of it applies
    // (every pipeline keeps the 4 s below).
    let without_ghost = text(9).replace("[instances.ghost]\n", "");
    let err = registry
        .reload(cfg(&without_ghost))
        .expect_err("ghost's pipeline is held");
    assert_eq!(
        (err.path(), err.problem()),
        ("instances.ghost", &Problem::Removed),
        "{err}"
    );
    assert_eq!(registry.pipelines().len(), 3);
    for (name, live) in registry.pipelines() {
        let start = Instant::now();
        let r = live
            .call(|| async {
                sleep(secs(10)).await;
                Ok::<_, &str>(())
            })
            .await;
        assert!(r.is_err(), "{name}: {r:?}");
        assert_eq!(start.elapsed(), secs(4), "{name} follows the reload");
    }
}

// ---------------------------------------------------------------------------------------------
// Refused reloads and validation of the call-wide keys
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_refused_reload_leaves_the_old_pipeline_in_force_whole() {
    let old_text = format!(
        "[instances.a]\ndeadline = \"300ms\"\nattempt_timeout = \"100ms\"\n{}[instances.a.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n[instances.a.breaker]\nconsecutive_failures = 50\n",
        retry_text("a", 10, 2)
    );
    let registry = registry(&old_text);
    let live = registry.pipeline("a").unwrap();
    let before = live.pipeline();

    let changed = || {
        cfg(&format!(
            "[instances.a]\ndeadline = \"5s\"\n{}[instances.a.bulkhead]\nmax_concurrent = 9\nmax_queue = 0\n[instances.b.breaker]\nfailure_rate = 0.5\n",
            retry_text("a", 10, 7)
        ))
    };
    let mut refused: Vec<(Config, &str)> = Vec::new();
    let mut c = changed();
    instance(&mut c, "a").attempt_timeout = zero();
    refused.push((c, "instances.a.attempt_timeout"));
    let mut c = changed();
    instance(&mut c, "a").deadline = zero();
    refused.push((c, "instances.a.deadline"));
    let mut c = changed();
    c.defaults.deadline = zero();
    refused.push((c, "defaults.deadline"));
    let mut c = changed();
    instance(&mut c, "b").breaker.as_mut().unwrap().failure_rate = Some(Toggle::On(1.5));
    refused.push((c, "instances.b.breaker.failure_rate"));
    let mut c = changed();
    instance(&mut c, "a").base = Some("nope".into());
    refused.push((c, ""));
    for (config, path) in refused {
        let err = registry.reload(config).expect_err(path);
        if path.is_empty() {
            assert!(matches!(err.problem(), Problem::UnknownBase(_)), "{err}");
        } else {
            assert_eq!(err.path(), path, "{err}");
        }
        assert!(
            Arc::ptr_eq(&before, &live.pipeline()),
            "{path}: pipeline remade"
        );
        assert_eq!(*registry.config(), cfg(&old_text), "{path}");
    }
    assert_eq!(registry.bulkhead("a").unwrap().capacity(), 1);

    // Behaviour: two attempts, each cut at 100 ms, a bulkhead of one.
    let start = Instant::now();
    let mut attempts = 0;
    let r = live
        .call(|| {
            attempts += 1;
            async {
                sleep(secs(1)).await;
                Ok::<_, &str>(0)
            }
        })
        .await;
    assert_eq!((r, attempts), (Err(Error::TimedOut), 2));
    assert_eq!(start.elapsed(), ms(210));
    let results = concurrently(&live, 2, ms(50)).await;
    assert_eq!(
        results.iter().filter(|r| bulkhead_full(r)).count(),
        1,
        "{results:?}"
    );
}

/// Doc: config validation "Checks the call-wide keys (`deadline`, `attempt_timeout`,
/// `min_attempt_time`) as a pipeline's builder would, at the key path of the layer that sets
/// each"; PipelineBuilder::build: "ConfigError::Zero for a zero deadline or attempt timeout".
#[test]
fn the_call_wide_keys_are_validated_at_their_key_paths() {
    let cases = [
        ("[instances.a]\ndeadline = \"0s\"\n", "instances.a.deadline"),
        (
            "[instances.a]\nattempt_timeout = \"0ms\"\n",
            "instances.a.attempt_timeout",
        ),
        (
            "[defaults]\nattempt_timeout = \"0\"\n",
            "defaults.attempt_timeout",
        ),
        ("[defaults]\ndeadline = \"0ns\"\n", "defaults.deadline"),
        (
            "[configs.slow]\ndeadline = \"0s\"\n",
            "configs.slow.deadline",
        ),
        (
            "[configs.slow]\nattempt_timeout = \"0s\"\n[instances.a]\nbase = \"slow\"\n",
            "configs.slow.attempt_timeout",
        ),
        (
            "[instances.\"api.v2\"]\nattempt_timeout = \"0s\"\n",
            "instances.\"api.v2\".attempt_timeout",
        ),
        (
            "[instances.\"api.v2\"]\ndeadline = \"0s\"\n[instances.\"api.v2\".breaker]\n",
            "instances.\"api.v2\".deadline",
        ),
    ];
    for (text, path) in cases {
        let err = Config::from_toml(text).expect_err(text);
        assert_eq!(err.path(), path, "{text}\n{err}");
        assert!(
            matches!(err.problem(), Problem::Rule(ConfigError::Zero { .. })),
            "{text}: {:?}",
            err.problem()
        );
        assert!(err.to_string().starts_with(&format!("{path}: ")), "{err}");
        // The same through a config built in code and validated, and through a registry.
        let mut config = Config::default();
        let mut policies = tidewall::config::Policies::default();
        policies.deadline = Some(tidewall::config::Toggle::On(Duration::ZERO));
        config.instances.insert("x".into(), policies);
        assert_eq!(
            config.validate().unwrap_err().path(),
            "instances.x.deadline"
        );
        let err = Registry::new(config).expect_err("zero deadline");
        assert_eq!(err.path(), "instances.x.deadline");
    }

    // What is accepted: off, a zero minimum, and the values a pipeline builder takes.
    for ok in [
        "[instances.a]\ndeadline = \"off\"\nattempt_timeout = \"off\"\nmin_attempt_time = \"0s\"\n",
        "[instances.a]\nmin_attempt_time = \"0\"\n",
        "[defaults]\nmin_attempt_time = \"5s\"\ndeadline = \"1ns\"\nattempt_timeout = \"1ns\"\n",
        "[instances.a]\ndeadline = \"1s\"\nmin_attempt_time = \"10s\"\n",
    ] {
        cfg(ok).validate().unwrap();
        Registry::new(cfg(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    // `min_attempt_time` cannot be turned "off" (it is a duration, default zero).
    assert!(Config::from_toml("[instances.a]\nmin_attempt_time = \"off\"\n").is_err());
}

// ---------------------------------------------------------------------------------------------
// Names needing quoting, max_instances
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_dotted_name_is_one_instance_everywhere() {
    let ear = Ear::default();
    let text = "[instances.\"api.v2\"]\ndeadline = \"50ms\"\n[instances.\"api.v2\".bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n[instances.api]\ndeadline = \"5s\"\n";
    let registry = Registry::builder(cfg(text))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let v2 = registry.pipeline("api.v2").unwrap();
    let api = registry.pipeline("api").unwrap();
    assert_eq!(v2.name(), "api.v2");
    assert_eq!(v2.pipeline().name(), "api.v2");

    let r = v2
        .call(|| async {
            sleep(ms(200)).await;
            Ok::<_, &str>(0)
        })
        .await;
    assert!(deadline_exceeded(&r), "{r:?}");
    let r = api
        .call(|| async {
            sleep(ms(200)).await;
            Ok::<_, &str>(0)
        })
        .await;
    assert_eq!(r, Ok(0), "\"api\" is another instance");

    let results = concurrently(&v2, 2, ms(10)).await;
    assert_eq!(results.iter().filter(|r| bulkhead_full(r)).count(), 1);
    let heard = ear.take();
    assert!(
        count(&heard, "bulkhead", "api.v2", "Rejected(bulkhead_full)") >= 1,
        "{heard:?}"
    );
    assert!(
        count(&heard, "pipeline", "api.v2", "Rejected(bulkhead_full)") >= 1,
        "{heard:?}"
    );
    assert!(
        heard.iter().all(|h| h.name == "api.v2" || h.name == "api"),
        "{heard:?}"
    );

    let mut bad = cfg(text);
    instance(&mut bad, "api.v2").attempt_timeout = zero();
    let err = registry.reload(bad).expect_err("a zero attempt timeout");
    assert_eq!(err.path(), "instances.\"api.v2\".attempt_timeout");
    names_needing_quoting_read_back_from_their_key_paths().await;
}

/// Doc (Registry): "keeps a place in each for every declared instance, so names taken from
/// requests can neither grow it without bound nor take a declared instance's place";
/// Registry::pipeline: a name the file does not declare is refused (Problem::Undeclared). So
/// a name from requests gets no pipeline, Undeclared and not Full, and takes no place; the
/// bound on names from requests is checked on a kind made for any name, the breaker.
#[tokio::test(start_paused = true)]
async fn max_instances_bounds_names_from_requests_and_keeps_the_declared_ones_places() {
    // Two declared instances, a bound of two: names from requests cannot take their places.
    let registry = Registry::builder(cfg(
        "[instances.a]\ndeadline = \"1s\"\n[instances.b]\ndeadline = \"1s\"\n",
    ))
    .max_instances(2)
    .build()
    .unwrap();
    for name in ["x", "y", "z", "x"] {
        let err = registry.pipeline(name).expect_err("an undeclared name");
        assert_eq!(err.problem(), &Problem::Undeclared, "{name}: {err}");
        assert_eq!(err.path(), format!("instances.{name}"), "{err}");
    }
    assert!(
        registry.pipelines().is_empty(),
        "a refused name took a place: {:?}",
        registry.pipelines()
    );
    assert!(
        registry.pipeline("a").is_ok(),
        "a declared instance lost its place"
    );
    assert!(
        registry.pipeline("b").is_ok(),
        "a declared instance lost its place"
    );
    let z = registry
        .pipeline("z")
        .expect_err("a third pipeline past the bound");
    assert_eq!(
        z.problem(),
        &Problem::Undeclared,
        "undeclared, not full: {z}"
    );
    assert_eq!(registry.pipelines().len(), 2, "{:?}", registry.pipelines());
    // Breakers, made for any name: both places are the declared instances'.
    let x = registry
        .breaker("x")
        .expect_err("a breaker past the declared ones' places");
    assert_eq!(x.problem(), &Problem::Full { max: 2 }, "{x}");
    assert!(
        registry.breaker("a").is_ok(),
        "a declared instance lost its place"
    );
    assert!(
        registry.breaker("b").is_ok(),
        "a declared instance lost its place"
    );
    assert_eq!(registry.breakers().len(), 2, "{:?}", registry.breakers());

    // One declared, a bound of three: two names from requests fit, a third does not.
    let registry = Registry::builder(cfg("[instances.a]\ndeadline = \"1s\"\n"))
        .max_instances(3)
        .build()
        .unwrap();
    for name in ["x", "y", "x", "z", "w"] {
        let err = registry.pipeline(name).expect_err("an undeclared name");
        assert_eq!(err.problem(), &Problem::Undeclared, "{name}: {err}");
    }
    registry.breaker("x").unwrap();
    registry.breaker("y").unwrap();
    registry.breaker("x").unwrap();
    let err = registry.breaker("z").expect_err("the last place is a's");
    assert_eq!(err.problem(), &Problem::Full { max: 3 });
    let err = registry
        .pipeline("x")
        .expect_err("holding x's breaker does not declare x");
    assert_eq!(err.problem(), &Problem::Undeclared, "{err}");
    let a = registry.pipeline("a").unwrap();
    assert_eq!(a.call(|| async { Ok::<_, &str>(1) }).await, Ok(1));
    assert_eq!(registry.pipelines().len(), 1);
    registry.breaker("a").unwrap();
    assert_eq!(registry.breakers().len(), 3);
    a_reload_declaring_more_instances_keeps_their_pipeline_places().await;
}

// ---------------------------------------------------------------------------------------------
// The registry-wide listener
// ---------------------------------------------------------------------------------------------

/// Doc (RegistryBuilder::on_event): "Tells `listener` of every event of every policy and
/// pipeline the registry makes (each Event names its policy and instance)".
#[tokio::test(start_paused = true)]
async fn the_registry_listener_hears_every_pipeline_and_policy_by_name_across_reloads() {
    let ear = Ear::default();
    let text = |attempts: u32| {
        format!(
            "{}[instances.pay.breaker]\nconsecutive_failures = 4\nbreak_duration = \"1h\"\n[instances.pay.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n[instances.ghost]\n",
            retry_text("pay", 10, attempts)
        )
    };
    let registry = Registry::builder(cfg(&text(2)))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let pay = registry.pipeline("pay").unwrap();

    let r: R<()> = pay.call(|| async { Err("down") }).await;
    assert_eq!(r, Err(Error::Inner("down")));
    let heard = ear.take();
    assert_eq!(count(&heard, "breaker", "pay", "Failed"), 2, "{heard:?}");
    assert_eq!(
        count(&heard, "pipeline", "pay", "RetryScheduled(1,10ms)"),
        1,
        "{heard:?}"
    );
    assert_eq!(count(&heard, "pipeline", "pay", "Failed"), 1, "{heard:?}");
    assert!(heard.iter().all(|h| h.name == "pay"), "{heard:?}");

    // After a reload the pipeline made anew still reports, under the same name.
    let reload = registry.reload(cfg(&text(3))).unwrap();
    assert_eq!(reload.pipelines, 1);
    let r: R<()> = pay.call(|| async { Err("down") }).await;
    assert!(
        circuit_open(&r),
        "the fourth failure opened it, the third attempt was refused: {r:?}"
    );
    let heard = ear.take();
    assert_eq!(count(&heard, "breaker", "pay", "Failed"), 2, "{heard:?}");
    assert_eq!(
        count(&heard, "breaker", "pay", "StateChanged(closed->open)"),
        1,
        "{heard:?}"
    );
    assert_eq!(
        count(&heard, "breaker", "pay", "Rejected(circuit_open)"),
        1,
        "{heard:?}"
    );
    assert_eq!(
        count(&heard, "pipeline", "pay", "RetryScheduled"),
        2,
        "{heard:?}"
    );
    assert_eq!(
        count(&heard, "pipeline", "pay", "Rejected(circuit_open)"),
        1,
        "{heard:?}"
    );
    assert!(heard.iter().all(|h| h.name == "pay"), "{heard:?}");

    // The bulkhead is the registry's and reports to the same listener.
    registry.breaker("pay").unwrap().force_closed();
    ear.take();
    let held = registry
        .bulkhead("pay")
        .unwrap()
        .try_acquire_owned()
        .unwrap();
    let r: R<()> = pay.call(|| async { Ok(()) }).await;
    assert!(bulkhead_full(&r), "{r:?}");
    drop(held);
    let heard = ear.take();
    assert_eq!(
        count(&heard, "bulkhead", "pay", "Rejected(bulkhead_full)"),
        1,
        "{heard:?}"
    );
    assert_eq!(
        count(&heard, "pipeline", "pay", "Rejected(bulkhead_full)"),
        1,
        "{heard:?}"
    );

    // A cancelled call, after its first poll.
    {
        let mut call = pin!(pay.call(|| async {
            sleep(secs(1)).await;
            Ok::<_, &str>(())
        }));
        assert!(futures_util::poll!(call.as_mut()).is_pending());
    }
    let heard = ear.take();
    assert_eq!(
        count(&heard, "pipeline", "pay", "Cancelled"),
        1,
        "{heard:?}"
    );
    assert_eq!(registry.bulkhead("pay").unwrap().in_flight(), 0);
    // A call never polled never started: nothing.
    drop(pay.call(|| async { Ok::<_, &str>(()) }));
    assert!(ear.take().is_empty());

    // A name the file does not declare: refused, nothing made, nothing to hear.
    let typo = registry.pipeline("gohst").expect_err("an undeclared name");
    assert_eq!(
        (typo.path(), typo.problem()),
        ("instances.gohst", &Problem::Undeclared),
        "{typo}"
    );
    assert!(ear.take().is_empty());

    // Policies made later (a pipeline of an instance of no section, a limiter declared by a
    // reload).
    let ghost = registry.pipeline("ghost").unwrap();
    let r: R<()> = ghost.call(|| async { Err("down") }).await;
    assert!(r.is_err());
    registry
        .reload(cfg(&format!(
            "{}[instances.lim.rate_limit]\ncount = 1\nperiod = \"1h\"\n",
            text(3)
        )))
        .unwrap();
    let lim = registry.pipeline("lim").unwrap();
    assert_eq!(lim.call(|| async { Ok::<_, &str>(1) }).await, Ok(1));
    let _ = lim
        .call_before(Deadline::after(&Tokio, secs(1)), || async {
            Ok::<_, &str>(2)
        })
        .await;
    let heard = ear.take();
    assert_eq!(count(&heard, "pipeline", "ghost", "Failed"), 1, "{heard:?}");
    assert_eq!(
        count(&heard, "pipeline", "lim", "Succeeded"),
        1,
        "{heard:?}"
    );
    assert_eq!(count(&heard, "rate", "lim", "Rejected("), 1, "{heard:?}");
}

// ---------------------------------------------------------------------------------------------
// Cancellation and permits
// ---------------------------------------------------------------------------------------------

/// Doc (Pipeline::call): "dropping the future releases everything it holds (bulkhead slot,
/// breaker permit — recorded as nothing)"; the bulkhead slot is held "for the whole call,
/// retries included".
#[tokio::test(start_paused = true)]
async fn a_call_sleeping_between_retries_holds_its_slot_until_dropped_across_a_reload() {
    let text = |max: usize| {
        format!(
            "{}[instances.a.bulkhead]\nmax_concurrent = {max}\nmax_queue = 4\nmax_wait = \"off\"\n",
            retry_text("a", 1000, 3)
        )
    };
    let registry = registry(&text(1));
    let live = registry.pipeline("a").unwrap();
    let bulkhead = registry.bulkhead("a").unwrap();

    let retrying = tokio::time::timeout(ms(1500), async {
        live.call(|| async { Err::<(), _>("down") }).await
    });
    let queued = async {
        sleep(ms(100)).await;
        live.call(|| async { Ok::<_, &str>(2) }).await
    };
    let watcher = async {
        sleep(ms(500)).await;
        assert_eq!(bulkhead.in_flight(), 1, "held through the backoff sleep");
        assert_eq!(bulkhead.queued(), 1);
        registry.reload(cfg(&text(2))).unwrap();
        sleep(ms(1)).await;
        assert_eq!(
            bulkhead.queued(),
            0,
            "the new permit went to the queued call"
        );
        sleep(ms(1200)).await;
        assert_eq!(
            bulkhead.in_flight(),
            0,
            "the dropped call gave its slot back"
        );
    };
    let (cut, second, ()) = tokio::join!(retrying, queued, watcher);
    assert!(cut.is_err(), "the timeout dropped the retrying call");
    assert_eq!(second, Ok(2));
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (0, 0));
    let permits: Vec<_> = (0..2).map(|_| bulkhead.try_acquire().unwrap()).collect();
    assert_eq!(permits.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn shrinking_the_bulkhead_mid_flight_revokes_nothing_and_refuses_new_calls() {
    let text =
        |max: usize| format!("[instances.a.bulkhead]\nmax_concurrent = {max}\nmax_queue = 0\n");
    let registry = registry(&text(3));
    let live = registry.pipeline("a").unwrap();
    let bulkhead = registry.bulkhead("a").unwrap();
    let shrinker = async {
        sleep(ms(100)).await;
        assert_eq!(bulkhead.in_flight(), 3);
        let reload = registry.reload(cfg(&text(1))).unwrap();
        assert_eq!(reload.pipelines, 1);
        assert_eq!((bulkhead.capacity(), bulkhead.in_flight()), (1, 3));
        let r = live.call(|| async { Ok::<_, &str>(99) }).await;
        assert!(bulkhead_full(&r), "{r:?}");
    };
    let (results, ()) = tokio::join!(concurrently(&live, 3, secs(1)), shrinker);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(bulkhead.in_flight(), 0);
    let results = concurrently(&live, 2, ms(10)).await;
    assert_eq!(
        results.iter().filter(|r| bulkhead_full(r)).count(),
        1,
        "{results:?}"
    );
}

fn chaos_config(rng: &mut Rng, valid: bool) -> Config {
    let deadline = ["\"300ms\"", "\"1s\"", "\"off\""][rng.index(3)];
    let mut config = cfg(&format!(
        "[instances.svc]\ndeadline = {deadline}\n\
         [instances.svc.bulkhead]\nmax_concurrent = {}\nmax_queue = {}\nmax_wait = {}\n\
         [instances.svc.retry]\nbackoff = \"constant\"\ninitial_delay = \"{}ms\"\njitter = \"none\"\nmax_attempts = {}\n\
         [instances.svc.breaker]\nconsecutive_failures = 3\nbreak_duration = \"50ms\"\nhalf_open_probes = 1\nmax_half_open_wait = \"off\"\n",
        1 + rng.below(4),
        rng.below(4),
        ["\"off\"", "\"30ms\""][rng.index(2)],
        10 + rng.below(40),
        1 + rng.below(4),
    ));
    if !valid {
        instance(&mut config, "svc").deadline = zero();
    }
    config
}

/// Counts an operation dropped before its end (while its call held a permit).
struct CutMidOp(Arc<AtomicUsize>, bool);

impl Drop for CutMidOp {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_add(1, SeqCst);
        }
    }
}

async fn chaos(seed: u64) {
    let mut rng = Rng::new(seed);
    let registry = Registry::new(chaos_config(&mut rng, true)).unwrap();
    let live = registry.pipeline("svc").unwrap();
    let bulkhead = registry.bulkhead("svc").unwrap();
    let breaker = registry.breaker("svc").unwrap();
    let running = Running::default();
    let cut_mid_op = Arc::new(AtomicUsize::new(0));

    let callers: Vec<_> = (0..80)
        .map(|_| {
            let (start, mode, cut_at, work, fails) = (
                rng.below(2000),
                rng.below(3),
                rng.below(300),
                rng.below(120),
                rng.next(),
            );
            let live = live.clone();
            let running = running.clone();
            let cut = Arc::clone(&cut_mid_op);
            async move {
                sleep(ms(start)).await;
                let mut attempt = 0u32;
                let op = move || {
                    attempt += 1;
                    let fail = (fails >> (attempt % 60)) & 1 == 1;
                    let guard = running.enter();
                    let cut_mid_op = CutMidOp(Arc::clone(&cut), true);
                    async move {
                        let _guard = guard;
                        let mut cut_mid_op = cut_mid_op;
                        sleep(ms(work)).await;
                        cut_mid_op.1 = false;
                        if fail { Err("boom") } else { Ok(()) }
                    }
                };
                match mode {
                    0 => {
                        let _ = live.call(op).await;
                    }
                    1 => {
                        let _ = tokio::time::timeout(ms(cut_at), live.call(op)).await;
                    }
                    _ => {
                        let mut call = pin!(live.call(op));
                        let _ = futures_util::poll!(call.as_mut());
                    }
                }
            }
        })
        .collect();
    let mut reload_rng = Rng::new(seed ^ 0xA5A5_5A5A_DEAD_BEEF);
    let reloader = async {
        for _ in 0..40 {
            sleep(ms(reload_rng.below(100))).await;
            let valid = reload_rng.below(5) != 0;
            let config = chaos_config(&mut reload_rng, valid);
            let outcome = registry.reload(config);
            assert_eq!(outcome.is_ok(), valid, "seed {seed}: {outcome:?}");
        }
    };
    futures_util::join!(join_all(callers), reloader);

    sleep(secs(2)).await;
    assert!(
        cut_mid_op.load(SeqCst) > 0,
        "seed {seed}: no call was dropped while its operation ran"
    );
    assert_eq!(
        (bulkhead.in_flight(), bulkhead.queued()),
        (0, 0),
        "seed {seed}: a permit or a waiter was lost"
    );
    assert_eq!(running.now.load(SeqCst), 0, "seed {seed}");
    assert!(
        running.peak.load(SeqCst) <= 4,
        "seed {seed}: more ran at once than any limit"
    );
    let cap = bulkhead.capacity();
    let permits: Vec<_> = (0..cap)
        .map(|i| {
            bulkhead
                .try_acquire()
                .unwrap_or_else(|e| panic!("seed {seed}: permit {i} of {cap}: {e}"))
        })
        .collect();
    drop(permits);

    // The breaker is not stuck half-open on a dropped probe (max_half_open_wait is off).
    let mut admitted = false;
    for _ in 0..5 {
        if live.call(|| async { Ok::<_, &str>(()) }).await.is_ok() {
            admitted = true;
            break;
        }
        sleep(ms(200)).await;
    }
    assert!(
        admitted,
        "seed {seed}: the breaker never admitted again ({:?})",
        breaker.state()
    );
    assert_eq!(bulkhead.in_flight(), 0, "seed {seed}");
}

#[tokio::test(start_paused = true)]
async fn dropping_calls_at_seeded_random_points_amid_reloads_loses_no_permit() {
    for seed in [1, 2, 3, 0x5EED, 0xDEAD_BEEF] {
        chaos(seed).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Long idle gaps, FakeClock runtime
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn hours_of_idle_time_between_calls_and_reloads_change_nothing_else() {
    let text = |d: &str| {
        format!(
            "[instances.a]\ndeadline = \"{d}\"\n{}[instances.a.breaker]\nconsecutive_failures = 2\nbreak_duration = \"10s\"\n[instances.a.budget]\nratio = 0.1\nmin_per_second = 1\nwindow = \"10s\"\n[instances.a.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n",
            retry_text("a", 100, 2)
        )
    };
    let registry = registry(&text("1s"));
    let live = registry.pipeline("a").unwrap();
    let slow_ok = || async {
        sleep(ms(900)).await;
        Ok::<_, &str>("ok")
    };
    assert_eq!(live.call(slow_ok).await, Ok("ok"));
    sleep(6 * HOUR).await;
    assert_eq!(
        live.call(slow_ok).await,
        Ok("ok"),
        "the deadline starts with the call"
    );

    registry.reload(cfg(&text("2s"))).unwrap();
    sleep(3 * HOUR).await;
    let slower = || async {
        sleep(ms(1900)).await;
        Ok::<_, &str>("ok")
    };
    assert_eq!(
        live.call(slower).await,
        Ok("ok"),
        "not from the reload three hours ago"
    );

    // Open the breaker (two failed attempts), wait hours: the next call is a probe that
    // closes it.
    let r: R<&str> = live.call(|| async { Err("down") }).await;
    assert_eq!(r, Err(Error::Inner("down")));
    assert_eq!(registry.breaker("a").unwrap().state(), State::Open);
    sleep(5 * HOUR).await;
    assert_eq!(live.call(|| async { Ok::<_, &str>("ok") }).await, Ok("ok"));
    assert_eq!(registry.breaker("a").unwrap().state(), State::Closed);

    // After an idle budget, a retry is granted again (min_per_second refills).
    sleep(2 * HOUR).await;
    let mut attempts = 0;
    let r = live
        .call(|| {
            attempts += 1;
            let fail = attempts == 1;
            async move { if fail { Err("blip") } else { Ok("ok") } }
        })
        .await;
    assert_eq!((r, attempts), (Ok("ok"), 2));
    assert_eq!(registry.bulkhead("a").unwrap().in_flight(), 0);
}

#[tokio::test]
async fn a_registry_on_a_fake_clock_runs_its_pipelines_on_that_clock() {
    let clock = FakeClock::new();
    let registry = on_clock(
        &clock,
        &format!(
            "[instances.a]\ndeadline = \"1s\"\n{}",
            retry_text("a", 100, 3)
        ),
    );
    let live: LivePipeline<FakeClock> = registry.pipeline("a").unwrap();
    let _typed: Arc<ConfiguredPipeline<FakeClock>> = live.pipeline();

    let sleeper = |d: Duration| {
        let clock = clock.clone();
        move || {
            let sleep = clock.sleep(d);
            async move {
                sleep.await;
                Ok::<_, &str>("done")
            }
        }
    };
    let (r, took) = drive(&clock, live.call(sleeper(secs(2)))).await;
    assert!(deadline_exceeded(&r), "{r:?}");
    assert_eq!(took, secs(1));

    let mut attempts = 0;
    let (r, took) = drive(
        &clock,
        live.call(|| {
            attempts += 1;
            async { Err::<(), _>("down") }
        }),
    )
    .await;
    assert_eq!((r, attempts, took), (Err(Error::Inner("down")), 3, ms(200)));

    clock.advance(10 * HOUR);
    registry
        .reload(cfg("[instances.a]\nattempt_timeout = \"300ms\"\n"))
        .unwrap();
    clock.advance(10 * HOUR);
    let (r, took) = drive(&clock, live.call(sleeper(secs(2)))).await;
    assert_eq!((r, took), (Err(Error::TimedOut), ms(300)));
    let (r, took) = drive(&clock, live.call(sleeper(ms(299)))).await;
    assert_eq!((r, took), (Ok("done"), ms(299)));
    assert_eq!(clock.pending_timers(), 0, "no timer left behind");
}

// ---------------------------------------------------------------------------------------------
// Option stages by hand, ConfiguredPipeline
// ---------------------------------------------------------------------------------------------

/// Doc (Admission): "`Option` of any of them (`None` admits everything: a stage chosen at run
/// time ...)".
#[tokio::test(start_paused = true)]
async fn option_stages_in_a_hand_built_pipeline() {
    assert!(Admission::try_admit(&None::<Bulkhead>).is_some());
    assert!(Admission::admit(&None::<Bulkhead>, Wait::No).await.is_ok());
    assert!(
        Admission::admit(&None::<RateLimiter>, Wait::No)
            .await
            .is_ok()
    );

    let bulkhead = Bulkhead::builder(1).max_queue(0).build().unwrap();
    let full = Some(bulkhead.clone());
    let _held = Admission::try_admit(&full).expect("one slot");
    assert_eq!(
        Admission::admit(&full, Wait::No).await.err(),
        Some(Rejected::BulkheadFull)
    );
    drop(_held);

    let none = Pipeline::builder()
        .rate_limit(None::<RateLimiter>)
        .bulkhead(None::<Bulkhead>)
        .build()
        .unwrap();
    let results = join_all((0..50).map(|i| {
        none.call(move || async move {
            sleep(ms(10)).await;
            Ok::<_, &str>(i)
        })
    }))
    .await;
    assert!(results.iter().all(Result::is_ok));

    let limiter = RateLimiter::builder(1, HOUR).build().unwrap();
    let some = Pipeline::builder()
        .deadline(secs(1))
        .rate_limit(Some(limiter))
        .bulkhead(Some(bulkhead.clone()))
        .build()
        .unwrap();
    let watcher = async {
        sleep(ms(5)).await;
        assert_eq!(bulkhead.in_flight(), 1, "the Some stage holds its slot");
    };
    let (first, ()) = tokio::join!(
        some.call(|| async {
            sleep(ms(10)).await;
            Ok::<_, &str>(1)
        }),
        watcher
    );
    assert_eq!(first, Ok(1));
    assert_eq!(bulkhead.in_flight(), 0);
    let second = some.call(|| async { Ok::<_, &str>(2) }).await;
    assert!(second.is_err(), "the Some limiter refuses: {second:?}");
    let boxed = some.boxed::<u32, &'static str>();
    assert!(boxed.call(|| async { Ok(3) }).await.is_err());
    the_configured_pipeline_shares_the_registrys_policies().await;
}

async fn the_configured_pipeline_shares_the_registrys_policies() {
    let registry = registry(
        "[instances.a]\ndeadline = \"1s\"\n[instances.a.bulkhead]\nmax_concurrent = 2\nmax_queue = 0\n",
    );
    let live = registry.pipeline("a").unwrap();
    let snapshot: Arc<ConfiguredPipeline> = live.pipeline();
    let boxed = (*snapshot).clone().boxed::<u32, &'static str>();
    let bulkhead = registry.bulkhead("a").unwrap();
    let watcher = async {
        sleep(ms(5)).await;
        assert_eq!(
            bulkhead.in_flight(),
            2,
            "snapshot and boxed copy hold registry permits"
        );
        let r = live.call(|| async { Ok::<_, &str>(0) }).await;
        assert!(bulkhead_full(&r), "{r:?}");
    };
    let (a, b, ()) = tokio::join!(
        snapshot.call(|| async {
            sleep(ms(10)).await;
            Ok::<_, &str>(1u32)
        }),
        boxed.call(|| async {
            sleep(ms(10)).await;
            Ok(2)
        }),
        watcher
    );
    assert_eq!((a, b), (Ok(1), Ok(2)));
    assert_eq!(bulkhead.in_flight(), 0);
}

// ---------------------------------------------------------------------------------------------
// Races: std threads reloading while pipelines are made and called
// ---------------------------------------------------------------------------------------------

/// Threads make pipelines of new names while another reloads: no handle may be left on a
/// pipeline that a reload did not remake. The names are declared (no section: no stage,
/// the defaults' deadline) in every text reloaded, as a pipeline is made only for a declared
/// instance; an undeclared name looked up amid the reloads is refused every time.
#[test]
fn pipelines_made_during_reloads_all_follow_the_last_one() {
    let clock = FakeClock::new();
    let text = |d: u64| {
        let mut text =
            format!("[defaults]\ndeadline = \"{d}ms\"\n[instances.a]\nattempt_timeout = \"1s\"\n");
        for i in 0..200 {
            writeln!(text, "[instances.n{i}]").unwrap();
        }
        text
    };
    let registry = Arc::new(on_clock(&clock, &text(1)));
    let stop = Arc::new(AtomicBool::new(false));
    let reloads = Arc::new(AtomicUsize::new(0));
    let reloader = {
        let (registry, stop, reloads) = (
            Arc::clone(&registry),
            Arc::clone(&stop),
            Arc::clone(&reloads),
        );
        std::thread::spawn(move || {
            let mut n = 2;
            while !stop.load(SeqCst) {
                registry.reload(cfg(&text(n))).unwrap();
                reloads.fetch_add(1, SeqCst);
                n += 1;
            }
        })
    };
    // Each maker goes on past its 300 pipelines until the reloader has done ten reloads, so
    // the two race however the threads are scheduled.
    let makers: Vec<_> = (0..2)
        .map(|t| {
            let (registry, reloads) = (Arc::clone(&registry), Arc::clone(&reloads));
            std::thread::spawn(move || {
                let mut made = Vec::new();
                for i in 0.. {
                    if i >= 300 && reloads.load(SeqCst) >= 10 {
                        break;
                    }
                    let name = format!("n{}", (i * 7 + t) % 200);
                    made.push((name.clone(), registry.pipeline(&name).unwrap()));
                    if i % 10 == 0 {
                        let undeclared = format!("u{}", (i * 7 + t) % 200);
                        let err = registry.pipeline(&undeclared).expect_err(&undeclared);
                        assert_eq!(err.problem(), &Problem::Undeclared, "{err}");
                    }
                }
                made
            })
        })
        .collect();
    let handles: Vec<(String, LivePipeline<FakeClock>)> =
        makers.into_iter().flat_map(|m| m.join().unwrap()).collect();
    stop.store(true, SeqCst);
    reloader.join().unwrap();

    let names: BTreeSet<&str> = handles.iter().map(|(n, _)| n.as_str()).collect();
    // Before any other reload: every pipeline runs on the configuration in force (a
    // pipeline made from the old configuration while a reload ran would be stale).
    let in_force = registry
        .config()
        .defaults
        .deadline
        .and_then(Toggle::on)
        .expect("a deadline");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for name in &names {
        let live = registry.pipeline(name).unwrap();
        let (r, took) = runtime.block_on(drive(
            &clock,
            live.call(|| {
                let sleep = clock.sleep(HOUR);
                async move {
                    sleep.await;
                    Ok::<_, &str>(())
                }
            }),
        ));
        assert!(deadline_exceeded(&r), "{name}: {r:?}");
        assert_eq!(
            took, in_force,
            "{name} runs on a configuration no longer in force"
        );
    }
    let reload = registry.reload(cfg(&text(7))).unwrap();
    assert_eq!(
        reload.pipelines,
        names.len(),
        "every pipeline got is made anew"
    );
    assert_eq!(registry.pipelines().len(), names.len());
    for (name, handle) in &handles {
        let fresh = registry.pipeline(name).unwrap();
        assert!(
            Arc::ptr_eq(&handle.pipeline(), &fresh.pipeline()),
            "{name}: a handle is left on a stale pipeline"
        );
    }
}

/// Many callers on a multi-thread runtime, std threads reloading (some refused): invariants
/// only. Nothing runs past the largest bulkhead ever configured, every result is one the docs
/// allow, and nothing is left held.
///
/// How many calls are admitted, refused or dropped while pending is up to the scheduler, so each
/// caller goes on past its 150 calls until the run as a whole has seen a call succeed and a call
/// dropped while pending: the invariants are then known to have been tested on both paths.
#[test]
fn many_callers_on_many_threads_with_reloads_from_std_threads() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let text = |max: u64, queue: u64, attempts: u64, valid: bool| {
        let text = format!(
            "[instances.hot]\ndeadline = \"30s\"\n[instances.hot.bulkhead]\nmax_concurrent = {max}\nmax_queue = {queue}\nmax_wait = \"20ms\"\n[instances.hot.retry]\nbackoff = \"constant\"\ninitial_delay = \"1ms\"\nmax_attempts = {attempts}\n[instances.hot.breaker]\nconsecutive_failures = 1000\nfailure_rate = \"off\"\n"
        );
        let mut config = cfg(&text);
        if !valid {
            instance(&mut config, "hot").deadline = zero();
        }
        config
    };
    let registry = Arc::new(registry_in(&runtime, text(2, 2, 2, true)));
    let live = registry.pipeline("hot").unwrap();
    let bulkhead = registry.bulkhead("hot").unwrap();
    let running = Running::default();
    let stop = Arc::new(AtomicBool::new(false));

    let reloaders: Vec<_> = (0..2u64)
        .map(|t| {
            let registry = Arc::clone(&registry);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut rng = Rng::new(0x1234 + t);
                let mut applied = 0;
                while !stop.load(SeqCst) {
                    let valid = rng.below(4) != 0;
                    let config = text(1 + rng.below(4), rng.below(3), 1 + rng.below(3), valid);
                    assert_eq!(registry.reload(config).is_ok(), valid);
                    applied += usize::from(valid);
                    std::thread::yield_now();
                }
                applied
            })
        })
        .collect();

    let succeeded = Arc::new(AtomicUsize::new(0));
    let dropped_pending = Arc::new(AtomicUsize::new(0));
    let outcomes = runtime.block_on(async {
        let tasks: Vec<_> = (0..8u64)
            .map(|t| {
                let live = live.clone();
                let running = running.clone();
                let succeeded = Arc::clone(&succeeded);
                let dropped_pending = Arc::clone(&dropped_pending);
                tokio::spawn(async move {
                    let mut rng = Rng::new(0xC0FFEE + t);
                    let mut seen = [0usize; 4];
                    let both_seen =
                        || succeeded.load(SeqCst) > 0 && dropped_pending.load(SeqCst) > 0;
                    for round in 0..100_000 {
                        if round >= 150 && both_seen() {
                            break;
                        }
                        let fail = rng.below(3) == 0;
                        let yields = rng.below(4);
                        let cut = rng.below(6);
                        let running = running.clone();
                        let op = move || {
                            let guard = running.enter();
                            async move {
                                let _guard = guard;
                                for _ in 0..yields {
                                    tokio::task::yield_now().await;
                                }
                                if fail { Err("boom") } else { Ok(()) }
                            }
                        };
                        let call = live.call(op);
                        let result = if cut == 0 {
                            // Dropped after a few polls.
                            let mut call = pin!(call);
                            let mut out = None;
                            for _ in 0..2 {
                                if let Poll::Ready(r) = futures_util::poll!(call.as_mut()) {
                                    out = Some(r);
                                    break;
                                }
                                tokio::task::yield_now().await;
                            }
                            out
                        } else {
                            Some(call.await)
                        };
                        let slot = match result {
                            None => 0,
                            Some(Ok(())) => 1,
                            Some(Err(Error::Inner("boom"))) => 2,
                            Some(Err(Error::Rejected(Rejected::BulkheadFull))) => 3,
                            Some(other) => panic!("unexpected result {other:?}"),
                        };
                        match slot {
                            0 => dropped_pending.fetch_add(1, SeqCst),
                            1 => succeeded.fetch_add(1, SeqCst),
                            _ => 0,
                        };
                        seen[slot] += 1;
                        // A refusal is ready at once: yield, or one caller could spin through
                        // all its calls while the callers holding slots wait for this thread.
                        tokio::task::yield_now().await;
                    }
                    seen
                })
            })
            .collect();
        let mut total = [0usize; 4];
        for task in tasks {
            let seen = tokio::time::timeout(Duration::from_secs(120), task)
                .await
                .expect("callers hung: a waiter was never woken")
                .unwrap();
            for (t, s) in total.iter_mut().zip(seen) {
                *t += s;
            }
        }
        total
    });
    stop.store(true, SeqCst);
    let applied: usize = reloaders.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(applied > 0);
    assert!(outcomes[1] > 0 && outcomes[0] > 0, "{outcomes:?}");
    assert!(
        running.peak.load(SeqCst) <= 4,
        "peak {}",
        running.peak.load(SeqCst)
    );
    assert_eq!(running.now.load(SeqCst), 0);
    assert_eq!(
        (bulkhead.in_flight(), bulkhead.queued()),
        (0, 0),
        "{outcomes:?}"
    );

    // The last word: a known configuration, and every handle on it.
    registry.reload(text(1, 0, 1, true)).unwrap();
    runtime.block_on(async {
        // Ordered by signals, not by timers: the probe calls only once `hold`'s op runs (so
        // it holds the only slot), and `hold` lets go only once the probe's call returned.
        let (entered, is_entered) = tokio::sync::oneshot::channel::<()>();
        let (probed, is_probed) = tokio::sync::oneshot::channel::<()>();
        let (mut entered, mut is_probed) = (Some(entered), Some(is_probed));
        // `move`: were the op never run, dropping it drops `entered`, and the probe fails
        // instead of waiting for ever.
        let hold = live.call(move || {
            let (entered, is_probed) = (entered.take(), is_probed.take());
            async move {
                entered.expect("one attempt").send(()).unwrap();
                is_probed.expect("one attempt").await.unwrap();
                Ok::<_, &str>(())
            }
        });
        let probe = async {
            is_entered.await.expect("the holding call never ran");
            let refused = live.call(|| async { Ok::<_, &str>(()) }).await;
            probed.send(()).unwrap();
            refused
        };
        let (held, refused) = tokio::join!(hold, probe);
        assert_eq!(held, Ok(()));
        assert!(bulkhead_full(&refused), "{refused:?}");
    });
}

fn registry_in(runtime: &tokio::runtime::Runtime, config: Config) -> Registry {
    let _guard = runtime.enter();
    Registry::new(config).unwrap()
}

// ---------------------------------------------------------------------------------------------
// More: futures made before a reload, stages in flight, hints, budgets, waits, places
// ---------------------------------------------------------------------------------------------

/// Docs: a call "started before [a reload] finishes on the settings it started with", and
/// (EventKind::Cancelled) "a call never polled never started". AMBIGUITY: the docs do not say
/// whether `call()` (making the future) or its first poll starts a call; the reading taken
/// here is the one the Cancelled event gives: a future not yet polled has not started, so it
/// runs on the configuration in force at its first poll.
async fn a_future_made_before_a_reload_and_first_polled_after_runs_on_the_new_settings() {
    let registry = registry("[instances.a]\ndeadline = \"1s\"\n");
    let live = registry.pipeline("a").unwrap();
    let call = live.call(|| async {
        sleep(ms(200)).await;
        Ok::<_, &str>(1)
    });
    registry
        .reload(cfg("[instances.a]\ndeadline = \"50ms\"\n"))
        .unwrap();
    let start = Instant::now();
    let r = call.await;
    assert!(deadline_exceeded(&r), "{r:?}");
    assert_eq!(start.elapsed(), ms(50));
}

/// Doc: "a call started before it finishes on the settings it started with" — its stages too.
#[tokio::test(start_paused = true)]
async fn a_call_in_flight_keeps_the_stages_it_started_with() {
    // The breaker section is removed while a call is between its retries: its later attempts
    // still go through the breaker (now open), so the operation runs once.
    let with = format!(
        "{}[instances.a.breaker]\nconsecutive_failures = 1\nbreak_duration = \"1h\"\n",
        retry_text("a", 100, 3)
    );
    let registry = registry(&with);
    let live = registry.pipeline("a").unwrap();
    let ran = AtomicUsize::new(0);
    let in_flight = live.call(|| {
        ran.fetch_add(1, SeqCst);
        async { Err::<(), _>("down") }
    });
    let remove = async {
        sleep(ms(50)).await;
        registry.reload(cfg(&retry_text("a", 100, 3))).unwrap();
    };
    let (r, ()) = tokio::join!(in_flight, remove);
    assert!(circuit_open(&r), "{r:?}");
    assert_eq!(
        ran.load(SeqCst),
        1,
        "the old pipeline's breaker refused the retries"
    );
    // A new call has no breaker: three attempts.
    ran.store(0, SeqCst);
    let _: R<()> = live
        .call(|| {
            ran.fetch_add(1, SeqCst);
            async { Err("down") }
        })
        .await;
    assert_eq!(ran.load(SeqCst), 3);

    // The bulkhead section is added while a call retries: the call in flight takes no slot,
    // so a call after the reload gets the only one and the old call keeps retrying.
    let defaults = "[defaults.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n";
    let registry = Registry::new(cfg(&format!("{defaults}{}", retry_text("b", 100, 4)))).unwrap();
    let live = registry.pipeline("b").unwrap();
    let ran = AtomicUsize::new(0);
    let old = live.call(|| {
        ran.fetch_add(1, SeqCst);
        async { Err::<(), _>("down") }
    });
    let add = async {
        sleep(ms(50)).await;
        registry
            .reload(cfg(&format!(
                "{defaults}{}[instances.b]\nbulkhead = {{}}\n",
                retry_text("b", 100, 4)
            )))
            .unwrap();
        let bulkhead = registry.bulkhead("b").unwrap();
        assert_eq!(bulkhead.in_flight(), 0, "the call in flight took no slot");
        live.call(|| async {
            sleep(ms(500)).await;
            Ok::<_, &str>(())
        })
        .await
    };
    let (old, new) = tokio::join!(old, add);
    assert_eq!(old, Err(Error::Inner("down")));
    assert_eq!(
        ran.load(SeqCst),
        4,
        "no attempt of the old call was refused by the new slot"
    );
    assert_eq!(new, Ok(()));
}

/// Doc (PipelineBuilder::retry): "waiting at least a rejection's retry_after (capped by
/// max_retry_after)"; the retry section's `max_retry_after` follows reloads with the rest of
/// the retry schedule.
async fn the_retry_after_cap_follows_reloads() {
    let text = |cap: &str| {
        format!(
            "{}max_retry_after = \"{cap}\"\n[instances.a.breaker]\nconsecutive_failures = 1\nbreak_duration = \"1h\"\n",
            retry_text("a", 10, 2)
        )
    };
    let registry = registry(&text("2s"));
    let live = registry.pipeline("a").unwrap();
    let _: R<()> = live.call(|| async { Err("down") }).await;
    // That call: attempt 1 failed and opened the breaker; its retry was refused.
    assert_eq!(registry.breaker("a").unwrap().state(), State::Open);

    for (cap, took) in [("2s", secs(2)), ("5s", secs(5)), ("20ms", ms(20))] {
        registry.reload(cfg(&text(cap))).unwrap();
        let start = Instant::now();
        let r = live.call(|| async { Ok::<_, &str>(()) }).await;
        assert!(circuit_open(&r), "{cap}: {r:?}");
        assert_eq!(
            start.elapsed(),
            took,
            "the open breaker's hint, capped at {cap}"
        );
    }
}

/// Doc (LivePipeline): its stages are "the registry's policies of the same name" — "retry
/// (with the retry budget, when the instance has one)".
async fn the_pipelines_retry_budget_is_the_registrys() {
    let ear = Ear::default();
    let text = format!(
        "{}[instances.a.budget]\nratio = 0\nmin_per_second = 1\nwindow = \"10s\"\n",
        retry_text("a", 10, 3)
    );
    let registry = Registry::builder(cfg(&text))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let live = registry.pipeline("a").unwrap();
    let budget = registry.retry_budget("a").unwrap();
    let now = registry.runtime().now();
    let mut drained = 0;
    while budget.try_withdraw(now) {
        drained += 1;
        assert!(drained < 10_000);
    }
    assert!(drained > 0, "min_per_second grants some retries");

    let mut attempts = 0;
    let r: R<()> = live
        .call(|| {
            attempts += 1;
            async { Err("down") }
        })
        .await;
    assert!(r.is_err());
    assert_eq!(
        attempts, 1,
        "the registry's budget, drained by hand, is the pipeline's"
    );
    let heard = ear.take();
    assert_eq!(
        count(&heard, "pipeline", "a", "BudgetExhausted"),
        1,
        "{heard:?}"
    );

    // A reload that keeps the window's shape keeps its counts: still drained.
    registry
        .reload(cfg(&text.replace("max_attempts = 3", "max_attempts = 4")))
        .unwrap();
    let mut attempts = 0;
    let _: R<()> = live
        .call(|| {
            attempts += 1;
            async { Err("down") }
        })
        .await;
    assert_eq!(attempts, 1, "still drained after the reload");
    // After the window, the floor grants retries again.
    sleep(secs(20)).await;
    let mut attempts = 0;
    let _: R<()> = live
        .call(|| {
            attempts += 1;
            async { Err("down") }
        })
        .await;
    assert_eq!(attempts, 4);
}

/// Doc (Admission::admit): "dropping the future releases whatever it was waiting for or held;
/// nothing is taken from the stage" — through a pipeline from configuration.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_waiting_for_the_limiter_takes_no_cell() {
    let text = "[instances.r.rate_limit]\ncount = 1\nperiod = \"1s\"\nburst = 1\njitter = \"0s\"\n";
    let registry = registry(text);
    let live = registry.pipeline("r").unwrap();
    let limiter = registry.rate_limiter("r").unwrap();
    assert_eq!(live.call(|| async { Ok::<_, &str>(0) }).await, Ok(0));

    let waiter = tokio::time::timeout(ms(500), live.call(|| async { Ok::<_, &str>(1) }));
    assert!(
        waiter.await.is_err(),
        "it waited for the next cell and was dropped"
    );
    // A reload that changes nothing of the limiter's shape, mid-way.
    registry.reload(cfg(text)).unwrap();
    sleep(ms(500)).await;
    assert_eq!(limiter.available(), 1, "the dropped waiter's cell is there");
    let start = Instant::now();
    assert_eq!(live.call(|| async { Ok::<_, &str>(2) }).await, Ok(2));
    assert_eq!(start.elapsed(), Duration::ZERO, "admitted at once");
}

/// Doc (PipelineBuilder::min_attempt_time): "A wait for the limiter or the bulkhead that
/// would leave less is refused ... with Rejected::DeadlineExceeded"; the key follows reloads.
#[tokio::test(start_paused = true)]
async fn min_attempt_time_bounds_the_bulkhead_wait_and_follows_reloads() {
    let text = |min: &str| {
        format!(
            "[instances.a]\ndeadline = \"1s\"\nmin_attempt_time = \"{min}\"\n[instances.a.bulkhead]\nmax_concurrent = 1\nmax_queue = 1\nmax_wait = \"off\"\n"
        )
    };
    let registry = registry(&text("800ms"));
    let live = registry.pipeline("a").unwrap();

    async fn queued_behind(live: &LivePipeline) -> (R<u32>, bool, Duration) {
        let ran = AtomicBool::new(false);
        let holder = live.call(|| async {
            sleep(ms(500)).await;
            Ok::<_, &str>(0)
        });
        let waiter = async {
            tokio::task::yield_now().await;
            let start = Instant::now();
            let r = live
                .call(|| {
                    ran.store(true, SeqCst);
                    async { Ok(1) }
                })
                .await;
            (r, start.elapsed())
        };
        let (held, (r, took)) = tokio::join!(holder, waiter);
        assert_eq!(held, Ok(0));
        (r, ran.load(SeqCst), took)
    }

    let (r, ran, took) = queued_behind(&live).await;
    assert!(deadline_exceeded(&r), "{r:?}");
    assert!(!ran, "a slot at 500 ms leaves 500 ms, less than 800");
    assert!(took <= ms(200), "no wait past 1 s - 800 ms: {took:?}");

    registry.reload(cfg(&text("0s"))).unwrap();
    let (r, ran, took) = queued_behind(&live).await;
    assert_eq!((r, ran, took), (Ok(1), true, ms(500)));
    assert_eq!(registry.bulkhead("a").unwrap().in_flight(), 0);
}

/// A breaker got by name before the instance had a breaker section (built from the
/// defaults) is the one a reload that adds the section puts in the pipeline. Got before the
/// instance was declared, it does not declare it: there is no pipeline of `x` until a
/// reload declares the instance (Problem::Undeclared).
#[tokio::test(start_paused = true)]
async fn a_breaker_got_before_its_section_existed_becomes_the_pipelines_stage() {
    let ear = Ear::default();
    let registry = Registry::builder(cfg("[defaults.breaker]\nconsecutive_failures = 1\n"))
        .on_event(ear.listener())
        .build()
        .unwrap();
    let early = registry.breaker("x").unwrap();
    let err = registry
        .pipeline("x")
        .expect_err("x is not declared, its breaker held or not");
    assert_eq!(
        (err.path(), err.problem()),
        ("instances.x", &Problem::Undeclared),
        "{err}"
    );
    assert!(registry.pipelines().is_empty());
    let reload = registry
        .reload(cfg(
            "[defaults.breaker]\nconsecutive_failures = 1\n[instances.x]\n",
        ))
        .unwrap();
    assert_eq!(
        (reload.pipelines, reload.built),
        (0, 0),
        "x declared with no section: {reload:?}"
    );
    assert!(reload.removed.is_empty(), "{reload:?}");
    let live = registry.pipeline("x").unwrap();
    early.force_open();
    assert_eq!(
        live.call(|| async { Ok::<_, &str>(1) }).await,
        Ok(1),
        "declared with no section: no stages"
    );
    let reload = registry
        .reload(cfg(
            "[defaults.breaker]\nconsecutive_failures = 1\n[instances.x]\nbreaker = {}\n",
        ))
        .unwrap();
    assert_eq!(reload.pipelines, 1);
    assert_eq!(early.state(), State::ForcedOpen, "same shape: state kept");
    let r = live.call(|| async { Ok::<_, &str>(2) }).await;
    assert!(
        circuit_open(&r),
        "the registry's breaker is the stage: {r:?}"
    );
    early.reset();
    let _: R<()> = live.call(|| async { Err("down") }).await;
    assert_eq!(early.state(), State::Open, "opened through the pipeline");
    let heard = ear.take();
    assert!(
        count(&heard, "breaker", "x", "Rejected(circuit_open)") >= 1,
        "{heard:?}"
    );
    assert!(
        count(&heard, "breaker", "x", "StateChanged") >= 1,
        "{heard:?}"
    );
    assert!(heard.iter().all(|h| h.name == "x"), "{heard:?}");
}

/// Doc (Registry): "keeps a place in each for every declared instance, so names taken from
/// requests can neither grow it without bound nor take a declared instance's place"; reload:
/// "Problem::Full when a kind holds too many policies to keep a place for every instance it
/// declares (names the old file did not declare took them) ... Nothing changes then". A name
/// from requests gets no pipeline (Problem::Undeclared), so it takes no pipeline place and a
/// reload declaring more instances gives each its pipeline; a breaker of such a name does
/// take a place, and a reload leaving a declared instance none is refused whole.
async fn a_reload_declaring_more_instances_keeps_their_pipeline_places() {
    let two = "[instances.a]\ndeadline = \"1s\"\n[instances.b]\ndeadline = \"1s\"\n";
    let registry = Registry::builder(cfg("[instances.a]\ndeadline = \"1s\"\n"))
        .max_instances(2)
        .build()
        .unwrap();
    let x = registry.pipeline("x").expect_err("an undeclared name");
    assert_eq!(x.problem(), &Problem::Undeclared, "{x}");
    let a = registry.pipeline("a").unwrap();
    let reload = registry.reload(cfg(two)).unwrap();
    assert_eq!(reload.pipelines, 1);
    let b = registry.pipeline("b");
    assert!(
        b.is_ok(),
        "a declared instance has no place for its pipeline: b {:?}",
        b.err()
    );
    assert!(Arc::ptr_eq(
        &a.pipeline(),
        &registry.pipeline("a").unwrap().pipeline()
    ));
    assert_eq!(registry.pipelines().len(), 2);

    // A breaker of a name from requests takes the place a reload would need for b's.
    let registry = Registry::builder(cfg("[instances.a]\ndeadline = \"1s\"\n"))
        .max_instances(2)
        .build()
        .unwrap();
    let a = registry.pipeline("a").unwrap();
    registry.breaker("x").unwrap();
    let err = registry
        .reload(cfg(two))
        .expect_err("x's breaker leaves b's no place");
    assert_eq!(err.problem(), &Problem::Full { max: 2 }, "{err}");
    let b = registry
        .pipeline("b")
        .expect_err("the refused reload declared b");
    assert_eq!(b.problem(), &Problem::Undeclared, "{b}");
    assert_eq!(a.call(|| async { Ok::<_, &str>(1) }).await, Ok(1));
    assert_eq!(registry.pipelines().len(), 1);
}

async fn the_earlier_of_deadline_and_attempt_timeout_decides_the_error_after_each_reload() {
    let registry = registry("[instances.a]\ndeadline = \"100ms\"\nattempt_timeout = \"200ms\"\n");
    let live = registry.pipeline("a").unwrap();
    let op = || async {
        sleep(secs(1)).await;
        Ok::<_, &str>(())
    };
    let start = Instant::now();
    let r = live.call(op).await;
    assert!(deadline_exceeded(&r), "{r:?}");
    assert_eq!(start.elapsed(), ms(100));
    registry
        .reload(cfg(
            "[instances.a]\ndeadline = \"200ms\"\nattempt_timeout = \"100ms\"\n",
        ))
        .unwrap();
    let start = Instant::now();
    assert_eq!(live.call(op).await, Err(Error::TimedOut));
    assert_eq!(start.elapsed(), ms(100));
}

/// The registry listener hears a bulkhead's waits (EventKind::Waited) with its name, and the
/// pipeline's end of the call after it.
#[tokio::test(start_paused = true)]
async fn the_registry_listener_hears_waits_in_the_pipelines_bulkhead() {
    let ear = Ear::default();
    let registry = Registry::builder(cfg(
        "[instances.q.bulkhead]\nmax_concurrent = 1\nmax_queue = 1\nmax_wait = \"off\"\n",
    ))
    .on_event(ear.listener())
    .build()
    .unwrap();
    let live = registry.pipeline("q").unwrap();
    let (a, b) = tokio::join!(
        live.call(|| async {
            sleep(ms(100)).await;
            Ok::<_, &str>(1)
        }),
        live.call(|| async { Ok::<_, &str>(2) })
    );
    assert_eq!((a, b), (Ok(1), Ok(2)));
    let heard = ear.take();
    assert_eq!(count(&heard, "bulkhead", "q", "Waited"), 1, "{heard:?}");
    assert_eq!(count(&heard, "pipeline", "q", "Succeeded"), 2, "{heard:?}");
}

/// Doc (config module): "An instance *has* a policy when it or its base has that section";
/// LivePipeline: "`deadline`, `attempt_timeout` and `min_attempt_time` come from the
/// instance's layers" — its own keys over its base's over the defaults', `"off"` included.
#[tokio::test(start_paused = true)]
async fn a_base_gives_its_sections_and_call_wide_keys_and_follows_reloads() {
    let text = |base_deadline: &str, base_bulkhead: bool, own: &str| {
        format!(
            "[defaults]\ndeadline = \"1h\"\n[defaults.bulkhead]\nmax_concurrent = 1\nmax_queue = 0\n\
             [configs.slow]\ndeadline = \"{base_deadline}\"\n{}\
             [instances.a]\nbase = \"slow\"\n{own}\n",
            if base_bulkhead { "bulkhead = {}\n" } else { "" }
        )
    };
    let registry = registry(&text("50ms", true, ""));
    let live = registry.pipeline("a").unwrap();
    let slow = || async {
        sleep(ms(100)).await;
        Ok::<_, &str>(1usize)
    };

    let start = Instant::now();
    let r = live.call(slow).await;
    assert!(deadline_exceeded(&r), "the base's 50 ms: {r:?}");
    assert_eq!(start.elapsed(), ms(50));
    let results = concurrently(&live, 2, ms(10)).await;
    assert_eq!(
        results.iter().filter(|r| bulkhead_full(r)).count(),
        1,
        "the base's bulkhead: {results:?}"
    );

    registry.reload(cfg(&text("200ms", true, ""))).unwrap();
    assert_eq!(live.call(slow).await, Ok(1), "the base's new 200 ms");

    registry
        .reload(cfg(&text("50ms", true, "deadline = \"off\"")))
        .unwrap();
    assert_eq!(
        live.call(slow).await,
        Ok(1),
        "the instance's own \"off\" over its base"
    );

    registry.reload(cfg(&text("50ms", false, ""))).unwrap();
    let results = concurrently(&live, 2, ms(10)).await;
    assert!(
        results.iter().all(Result::is_ok),
        "the base lost its section: {results:?}"
    );
    let start = Instant::now();
    let r = live.call(slow).await;
    assert!(deadline_exceeded(&r), "{r:?}");
    assert_eq!(start.elapsed(), ms(50));
}

/// Doc (config): "A name as a key path writes it: bare when TOML would write it bare, quoted
/// otherwise (`instances."api.v2".breaker`), so a path reads back unambiguously." Checked by
/// reading each path's name segment back as TOML, for the call-wide keys and a pipeline of
/// that name.
async fn names_needing_quoting_read_back_from_their_key_paths() {
    for name in [
        "api.v2",
        "my api",
        "",
        "a\"b",
        "a\\b",
        "ünï",
        "a-b_1",
        "a'b",
        "tab\there",
        "1.5",
    ] {
        let mut config = Config::default();
        instance(&mut config, name).attempt_timeout = zero();
        let err = config.validate().expect_err(name);
        let path = err.path().to_owned();
        let segment = path
            .strip_prefix("instances.")
            .and_then(|p| p.strip_suffix(".attempt_timeout"))
            .unwrap_or_else(|| panic!("{name:?}: path {path:?}"));
        let bare = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        assert_eq!(!segment.starts_with('"'), bare, "{name:?}: {path}");
        let text = format!("[instances.{segment}]\ndeadline = \"1s\"\n");
        let back = Config::from_toml(&text)
            .unwrap_or_else(|e| panic!("{name:?}: the path segment {segment} is not TOML: {e}"));
        assert_eq!(
            back.instances.keys().collect::<Vec<_>>(),
            [name],
            "{name:?}: {segment} reads back as another name"
        );

        // The same name as a pipeline: a registry refuses at that path, and serves it.
        let err = Registry::new(config).expect_err(name);
        assert_eq!(err.path(), path);
        let registry = Registry::new(back).unwrap();
        let live = registry.pipeline(name).unwrap();
        assert_eq!(live.name(), name);
        let start = Instant::now();
        let r = live
            .call(|| async {
                sleep(secs(2)).await;
                Ok::<_, &str>(())
            })
            .await;
        assert!(deadline_exceeded(&r), "{name:?}: {r:?}");
        assert_eq!(start.elapsed(), secs(1), "{name:?}");
    }
}
