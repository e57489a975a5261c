//! Regression tests for a docs-against-code review of the bulkhead, the pipeline, hedging,
//! fan-out, the retry budget and the HTTP stack: one test per finding, each asserting what the
//! public docs promise (quoted above it), so a test fails while the finding's bug is real.
//! Virtual time only; the scenarios that may deadlock run on a spawned thread under a
//! real-time hang detector (a bound on hanging, never a timing assertion).
#![cfg(all(feature = "tokio", feature = "test-util"))]

#[path = "common/hang.rs"]
mod hang;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::noop_waker_ref;
use tidewall::adaptive::{AdaptiveLimiter, FixedLimit, Priority};
use tidewall::admission::{Admission, QueueDiscipline, Wait};
use tidewall::bulkhead::Bulkhead;
use tidewall::telemetry::EventKind;
use tidewall::testing::FakeClock;
use tidewall::{Deadline, Rejected};

use hang::without_hanging;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(noop_waker_ref()))
}

// Bulkhead `on_event`: "each wait that ended admitted with its length. On the caller's
// thread, in the call"; `Registry` lets a listener look the registry up. A listener that reads
// the bulkhead (`in_flight()`) when a wait ends admitted must neither deadlock nor panic.
#[test]
fn a_bulkhead_listener_may_read_the_bulkhead_when_a_wait_ends() {
    without_hanging("a bulkhead listener calling in_flight() on Waited", || {
        let clock = FakeClock::new();
        let cell: Arc<OnceLock<Bulkhead<FakeClock>>> = Arc::new(OnceLock::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (inside, log) = (Arc::clone(&cell), Arc::clone(&seen));
        let bulkhead = Bulkhead::builder(1)
            .max_queue(1)
            .runtime(clock.clone())
            .on_event(move |event| {
                if let EventKind::Waited(_) = event.kind
                    && let Some(bulkhead) = inside.get()
                {
                    log.lock().unwrap().push(bulkhead.in_flight());
                }
            })
            .build()
            .unwrap();
        assert!(cell.set(bulkhead.clone()).is_ok());
        let held = bulkhead.try_acquire_owned().unwrap();
        let mut waiting = Box::pin(bulkhead.acquire());
        assert!(poll_once(waiting.as_mut()).is_pending());
        clock.advance(ms(30));
        drop(held);
        let Poll::Ready(Ok(permit)) = poll_once(waiting.as_mut()) else {
            panic!("the waiter should have the freed slot");
        };
        drop(permit);
        assert_eq!(*seen.lock().unwrap(), [1]);
    });
}

// `Priority`: the queue sheds "the newest of the least important to make room"; `on_event`:
// each refusal is told, on the caller's thread. A listener that reads the limiter when a shed
// waiter learns its refusal must neither deadlock nor panic.
#[test]
fn an_adaptive_listener_may_read_the_limiter_when_a_waiter_is_shed() {
    without_hanging("an adaptive listener calling in_flight() on a shed", || {
        let clock = FakeClock::new();
        let cell: Arc<OnceLock<AdaptiveLimiter<FixedLimit, FakeClock>>> = Arc::new(OnceLock::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (inside, log) = (Arc::clone(&cell), Arc::clone(&seen));
        let limiter = AdaptiveLimiter::builder(FixedLimit(1))
            .max_queue(1)
            .max_wait(None)
            .runtime(clock.clone())
            .on_event(move |event| {
                if let EventKind::Rejected(_) = event.kind
                    && let Some(limiter) = inside.get()
                {
                    log.lock().unwrap().push(limiter.in_flight());
                }
            })
            .build()
            .unwrap();
        assert!(cell.set(limiter.clone()).is_ok());
        let held = limiter.try_acquire().unwrap();
        let sheddable = limiter.with_priority(Priority::Sheddable);
        let mut shed = Box::pin(sheddable.admit(Wait::Until(Deadline::none())));
        assert!(poll_once(shed.as_mut()).is_pending());
        let critical = limiter.with_priority(Priority::Critical);
        let mut important = Box::pin(critical.admit(Wait::Until(Deadline::none())));
        assert!(poll_once(important.as_mut()).is_pending());
        assert!(matches!(
            poll_once(shed.as_mut()),
            Poll::Ready(Err(Rejected::BulkheadFull))
        ));
        assert_eq!(*seen.lock().unwrap(), [1]);
        drop((held, important));
        assert_eq!(limiter.in_flight(), 0);
    });
}

// Bulkhead module: when full, a caller "gets `Rejected::BulkheadFull` at once
// (`max_queue(0)`...)", whatever deadline it brings.
#[test]
fn a_full_bulkhead_without_a_queue_refuses_as_full_even_past_the_deadline() {
    let clock = FakeClock::new();
    let bulkhead = Bulkhead::builder(1)
        .reject_when_full()
        .runtime(clock.clone())
        .build()
        .unwrap();
    let _held = bulkhead.try_acquire().unwrap();
    let mut late = Box::pin(bulkhead.acquire_before(Deadline::at(clock.now())));
    assert!(matches!(
        poll_once(late.as_mut()),
        Poll::Ready(Err(Rejected::BulkheadFull))
    ));
}

// `QueueDiscipline::Codel`: "once the queue has not been empty for `interval`, a caller who
// joins it waits at most `target`"; `Bulkhead::reconfigure` applies the new settings in place.
// A queue that stood under FIFO and is switched to CoDel is bounded once it has stood for
// `interval` after the switch, not only after it next empties.
#[test]
fn codel_switched_on_over_a_standing_queue_bounds_the_next_wait() {
    let clock = FakeClock::new();
    let fifo = || {
        Bulkhead::builder(1)
            .max_queue(4)
            .max_wait(Duration::from_secs(10))
    };
    let bulkhead = fifo().runtime(clock.clone()).build().unwrap();
    let _held = bulkhead.try_acquire().unwrap();
    let mut standing = Box::pin(bulkhead.acquire());
    assert!(poll_once(standing.as_mut()).is_pending());
    bulkhead
        .reconfigure(fifo().discipline(QueueDiscipline::Codel {
            target: ms(5),
            interval: ms(100),
        }))
        .unwrap();
    clock.advance(ms(200));
    let mut joining = Box::pin(bulkhead.acquire());
    assert!(poll_once(joining.as_mut()).is_pending());
    clock.advance(ms(5));
    assert!(
        matches!(
            poll_once(joining.as_mut()),
            Poll::Ready(Err(Rejected::BulkheadFull))
        ),
        "a caller joining a queue standing 200 ms under CoDel waits at most 5 ms"
    );
    assert!(poll_once(standing.as_mut()).is_pending());
}

/// Input `i` of a fan-out scenario: `(after, fails, sets the flag)`.
fn fan_out_work(
    plan: &'static [(u64, bool, bool)],
    ran: &Arc<std::sync::atomic::AtomicBool>,
) -> impl FnMut(usize) -> Pin<Box<dyn Future<Output = Result<usize, &'static str>> + Send>> {
    let ran = Arc::clone(ran);
    move |i| {
        let (after, fails, flags) = plan[i];
        let ran = Arc::clone(&ran);
        Box::pin(async move {
            tokio::time::sleep(ms(after)).await;
            if flags {
                ran.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if fails { Err("boom") } else { Ok(i) }
        })
    }
}

// `FanOut::try_run`: "stops at the first error or panic, aborts the tasks still running";
// ordered: "the tasks of later inputs" are aborted without waiting for the consumer to reach
// the error, while the earlier ones run on and are yielded first.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_ordered_fail_fast_fan_out_aborts_later_inputs_at_once() {
    use futures_util::StreamExt as _;
    static PLAN: [(u64, bool, bool); 3] =
        [(1_000, false, false), (0, true, false), (100, false, true)];
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let results = tidewall::fan_out::FanOut::new(3)
        .unwrap()
        .ordered()
        .try_run_iter(0..3, fan_out_work(&PLAN, &ran));
    let mut results = std::pin::pin!(results);
    assert_eq!(results.next().await.map(|r| r.ok()), Some(Some(0)));
    assert!(
        !ran.load(std::sync::atomic::Ordering::SeqCst),
        "input 2 ran to its end 900 ms after input 1 failed"
    );
    assert!(matches!(results.next().await, Some(Err(_))));
    assert!(results.next().await.is_none());
}

// The same, unordered, with a consumer that takes its time between results: the tasks still
// running are aborted at the first poll after the failure arrived, not when it is yielded.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_unordered_fail_fast_fan_out_aborts_at_the_first_poll_after_the_failure() {
    use futures_util::StreamExt as _;
    static PLAN: [(u64, bool, bool); 4] = [
        (5, false, false),
        (5, false, false),
        (10, true, false),
        (100, false, true),
    ];
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let results = tidewall::fan_out::FanOut::new(4)
        .unwrap()
        .try_run_iter(0..4, fan_out_work(&PLAN, &ran));
    let mut results = std::pin::pin!(results);
    assert!(matches!(results.next().await, Some(Ok(_))));
    tokio::time::sleep(ms(20)).await;
    assert!(matches!(results.next().await, Some(Ok(_))));
    tokio::time::sleep(ms(200)).await;
    assert!(
        !ran.load(std::sync::atomic::Ordering::SeqCst),
        "input 3 ran on after a poll saw input 2 fail"
    );
    assert!(matches!(results.next().await, Some(Err(_))));
    assert!(results.next().await.is_none());
}

// `HedgeBuilder::build`: a budget ratio outside [0, 1000] is an error; `ConfigError`'s field
// is "the builder field, as named in the builder method": `budget_ratio`.
#[test]
fn a_bad_hedge_budget_ratio_names_budget_ratio() {
    use tidewall::ConfigError;
    use tidewall::hedge::Hedge;
    let negative = Hedge::builder().budget_ratio(-0.5).build().unwrap_err();
    assert_eq!(negative.field(), Some("budget_ratio"));
    let nan = Hedge::builder().budget_ratio(f64::NAN).build().unwrap_err();
    assert_eq!(
        nan,
        ConfigError::NotFinite {
            field: "budget_ratio"
        }
    );
}

#[cfg(feature = "http")]
mod http_stack {
    use std::time::Duration;

    use tidewall::Backoff;
    use tidewall::bulkhead::Bulkhead;
    use tidewall::http::{ClientPolicies, FailureKind, HttpFailure, Overrides};

    use super::ms;

    fn response(status: u16) -> http::Response<()> {
        http::Response::builder().status(status).body(()).unwrap()
    }

    fn get(path: &str) -> http::Request<()> {
        http::Request::get(format!("http://api.example{path}"))
            .body(())
            .unwrap()
    }

    /// `/fail` answers 503 at once; `/hang` never answers.
    async fn send(request: http::Request<()>) -> Result<http::Response<()>, std::io::Error> {
        if request.uri().path() == "/hang" {
            std::future::pending::<()>().await;
        }
        Ok(response(503))
    }

    fn retrying(deadline: Duration) -> tidewall::http::ClientPoliciesBuilder {
        ClientPolicies::builder()
            .retry(
                Backoff::constant(ms(100))
                    .jitter(tidewall::Jitter::None)
                    .max_attempts(3)
                    .build()
                    .unwrap(),
            )
            .retry_budget(None)
            .breaker(None)
            .deadline(Some(deadline))
    }

    // `ClientPolicies::run`: "a response an earlier attempt got is kept: when the deadline cuts
    // the attempt after it, in the stack's own waits, its attempt timeout or its send, that
    // response is returned as `Ok`". The attempt timeout ends with the deadline here.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_attempt_timeout_at_the_deadline_keeps_the_earlier_response() {
        let policies = retrying(ms(1_000))
            .attempt_timeout(Some(ms(900)))
            .build()
            .unwrap();
        let calls = std::sync::atomic::AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let outcome = policies
            .run(get("/"), Overrides::new(), |request| {
                let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let path = if n == 0 { "/fail" } else { "/hang" };
                let (mut parts, body) = request.into_parts();
                parts.uri = format!("http://api.example{path}").parse().unwrap();
                send(http::Request::from_parts(parts, body))
            })
            .await;
        assert_eq!(outcome.map(|r| r.status().as_u16()).ok(), Some(503));
        assert_eq!(start.elapsed(), ms(1_000));
    }

    // The same, when the deadline ends the attempt's wait in the host's bulkhead queue.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_queue_wait_cut_by_the_deadline_keeps_the_earlier_response() {
        let policies = retrying(ms(1_000))
            .bulkhead(Some(Bulkhead::builder(1).max_queue(4).max_wait(None)))
            .build()
            .unwrap();
        let holder = {
            let policies = policies.clone();
            tokio::spawn(async move {
                tokio::time::sleep(ms(50)).await;
                let _ = policies
                    .run(get("/hang"), Overrides::new().no_retry(), send)
                    .await;
            })
        };
        let start = tokio::time::Instant::now();
        let outcome = policies.run(get("/fail"), Overrides::new(), send).await;
        assert_eq!(outcome.map(|r| r.status().as_u16()).ok(), Some(503));
        assert_eq!(start.elapsed(), ms(1_000));
        holder.abort();
    }

    // `ClientPoliciesBuilder::rate_limit`: "waited for within the deadline, last before the
    // send: an attempt holds its bulkhead or adaptive slot while it waits, so the token is
    // taken just before the send and sends keep the limit's pace". Two slots that free at
    // the same instant do not let two queued attempts go out together.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn sends_keep_the_rate_limits_pace_when_slots_free_together() {
        use std::sync::{Arc, Mutex};
        let policies = ClientPolicies::builder()
            .retry_budget(None)
            .breaker(None)
            .bulkhead(Some(Bulkhead::builder(2).max_queue(4).max_wait(None)))
            .rate_limit(Some(
                tidewall::rate::KeyedRateLimiter::builder(1, Duration::from_secs(1))
                    .burst(1)
                    .jitter(Duration::ZERO),
            ))
            .deadline(Some(Duration::from_secs(60)))
            .attempt_timeout(Some(Duration::from_secs(60)))
            .build()
            .unwrap();
        let start = tokio::time::Instant::now();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (at, path) in [(0, "/a"), (0, "/b"), (500, "/c"), (500, "/d")] {
            let (policies, sent) = (policies.clone(), Arc::clone(&sent));
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(ms(at)).await;
                policies
                    .run(get(path), Overrides::new().no_retry(), |request| {
                        let sent = Arc::clone(&sent);
                        async move {
                            let now = tokio::time::Instant::now() - start;
                            sent.lock().unwrap().push(now);
                            // The first two hold their slots until 10 s together.
                            match request.uri().path() {
                                "/a" | "/b" => tokio::time::sleep_until(start + ms(10_000)).await,
                                _ => {}
                            }
                            Ok::<_, std::io::Error>(response(200))
                        }
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap().status(), 200);
        }
        let mut sent = sent.lock().unwrap().clone();
        sent.sort();
        assert_eq!(sent, [ms(0), ms(1_000), ms(10_000), ms(11_000)]);
    }

    // `HttpFailure` for a `BoxError`: "the first refusal, timeout or I/O error in the source
    // chain; a timeout is Tidewall's `Elapsed` or `DeadlineExceeded`".
    #[test]
    fn a_boxed_deadline_exceeded_reads_as_a_timeout() {
        let boxed: Box<dyn std::error::Error + Send + Sync> =
            Box::new(tidewall::time::DeadlineExceeded);
        assert_eq!(boxed.failure_kind(), FailureKind::Timeout);
    }
}

// `Admission::finish`: "A call whose retry a later stage refused (an open breaker, a spent
// budget) after an attempt reached the dependency ends with that attempt's outcome": a call
// whose only attempt failed and opened the breaker, its retry refused, is a drop.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_breaker_refused_retry_teaches_the_failed_attempt() {
    use tidewall::adaptive::Aimd;
    use tidewall::breaker::CircuitBreaker;
    use tidewall::pipeline::Pipeline;
    let aimd = Aimd::builder()
        .min_limit(1)
        .initial_limit(8)
        .max_limit(100)
        .backoff_ratio(0.5)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let limiter = AdaptiveLimiter::builder(aimd).build().unwrap();
    let pipeline = Pipeline::builder()
        .bulkhead(limiter.clone())
        .retry(
            tidewall::Backoff::constant(ms(10))
                .jitter(tidewall::Jitter::None)
                .max_attempts(2)
                .build()
                .unwrap(),
        )
        .breaker(
            CircuitBreaker::builder()
                .consecutive_failures(1)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let calls = std::sync::atomic::AtomicU32::new(0);
    let outcome = pipeline
        .call(|| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err::<(), &str>("down") }
        })
        .await;
    assert!(
        matches!(
            outcome,
            Err(tidewall::Error::Rejected(Rejected::CircuitOpen { .. }))
        ),
        "{outcome:?}"
    );
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(limiter.limit(), 4, "the failed attempt is a drop");
}

// `RetryBudget`: "Right at any age: a budget built long before its first use, or idle for
// any time between uses, counts exactly the calls and retries of its last window", past the
// 584 years a u64 of nanoseconds holds too.
#[test]
fn a_retry_budget_slides_past_584_years() {
    use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
    let origin = std::time::Instant::now();
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.5)
        .min_per_second(0)
        .window(Duration::from_secs(10))
        .build()
        .unwrap();
    let budget = RetryBudget::new(policy, origin);
    let Some(late) = origin.checked_add(Duration::from_secs(600 * 365 * 86_400)) else {
        return; // this platform's clock cannot hold the instant
    };
    for _ in 0..10 {
        budget.deposit(late);
    }
    assert!(budget.try_withdraw(late));
    assert_eq!(budget.balance(late), 4);
    let hour = late + Duration::from_secs(3_600);
    assert!(
        !budget.has_balance(hour),
        "an hour later the window's calls have left it"
    );
}

// The same window, deposited in the middle of a bucket: it counts for at least
// `window - window / buckets` after it was made, and not `window` after its bucket began.
#[test]
fn a_retry_budget_deposit_counts_for_the_documented_span() {
    use tidewall::budget::{RetryBudget, RetryBudgetPolicy};
    let origin = std::time::Instant::now();
    let policy = RetryBudgetPolicy::builder()
        .ratio(0.5)
        .min_per_second(0)
        .window(Duration::from_secs(10))
        .buckets(10)
        .build()
        .unwrap();
    let budget = RetryBudget::new(policy, origin);
    let made = origin + ms(900);
    for _ in 0..10 {
        budget.deposit(made);
    }
    assert!(budget.has_balance(made + ms(9_000)));
    assert!(!budget.has_balance(origin + Duration::from_secs(10)));
}

// The keyed tables are `Send + Sync` and `Debug`: formatting one while another thread adds
// keys must not deadlock (it took the settings lock, then each shard's; a new key takes its
// shard's, then the settings').
#[test]
fn formatting_a_keyed_table_while_keys_are_added_never_deadlocks() {
    without_hanging("Debug of keyed tables racing new keys", || {
        let bulkheads = Bulkhead::builder(4)
            .runtime(FakeClock::new())
            .keyed()
            .build::<u64>()
            .unwrap();
        let limiters = AdaptiveLimiter::builder(FixedLimit(4))
            .runtime(FakeClock::new())
            .keyed()
            .build::<u64>()
            .unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..20_000 {
                    std::hint::black_box(format!("{bulkheads:?}{limiters:?}"));
                }
            });
            s.spawn(|| {
                for key in 0..20_000_u64 {
                    drop(bulkheads.try_acquire(&key));
                    drop(limiters.try_acquire(&key));
                }
            });
        });
    });
}

#[cfg(all(feature = "serde", feature = "toml"))]
mod registry_bounds {
    use tidewall::config::{Config, Problem, Registry};

    // `Registry`: "holds at most `max_instances` policies of each kind"; `reload`: `Full`
    // when a kind cannot keep a place for every declared instance, "nothing changes then".
    // Pipelines are a kind too, made only for declared instances: a reload can neither drop
    // a held one's instance to make room (`Removed`) nor declare one past the bound.
    #[test]
    fn a_reload_keeps_pipelines_within_max_instances() {
        let registry = Registry::builder(Config::from_toml("[instances.x]\n").unwrap())
            .max_instances(1)
            .build()
            .unwrap();
        registry.pipeline("x").unwrap();
        let declared = Config::from_toml("[instances.a]\ndeadline = \"1s\"\n").unwrap();
        let refused = registry.reload(declared).unwrap_err();
        assert_eq!(refused.problem(), &Problem::Removed, "{refused}");
        let both = Config::from_toml("[instances.x]\n[instances.a]\n").unwrap();
        let refused = registry.reload(both).unwrap_err();
        assert!(
            matches!(refused.problem(), Problem::Full { max: 1 }),
            "{refused}"
        );
        assert_eq!(registry.pipelines().len(), 1);
    }
}

#[cfg(all(feature = "serde", feature = "toml"))]
mod registry_keyed_bounds {
    use tidewall::config::{Config, Problem, Registry};

    // The same bound for a keyed table.
    #[test]
    fn a_reload_keeps_keyed_tables_within_max_instances() {
        let with_breaker = "[defaults.breaker]\nfailure_rate = 0.5\n";
        let registry = Registry::builder(Config::from_toml(with_breaker).unwrap())
            .max_instances(1)
            .build()
            .unwrap();
        registry.keyed_breaker::<u64>("x").unwrap();
        let declared =
            Config::from_toml(&format!("{with_breaker}[instances.a.breaker]\n")).unwrap();
        let refused = registry.reload(declared).unwrap_err();
        assert!(
            matches!(refused.problem(), Problem::Full { max: 1 }),
            "{refused}"
        );
    }
}

#[cfg(all(feature = "serde", feature = "toml"))]
mod retry_layers {
    use tidewall::config::Config;

    // `RetryConfig::jitter`: a layer naming `backoff = "decorrelated_jitter"` may not set it;
    // one inherited from another layer is ignored by that schedule (as a `factor` from the
    // defaults is, for a schedule that is not exponential).
    #[test]
    fn an_inherited_jitter_leaves_decorrelated_instances_alone() {
        let config = Config::from_toml(
            "[defaults.retry]\njitter = \"equal\"\n\
             [instances.a.retry]\nbackoff = \"decorrelated_jitter\"\n",
        )
        .unwrap();
        assert!(config.instance("a").unwrap().backoff().is_ok());
        let same_layer = Config::from_toml(
            "[instances.a.retry]\nbackoff = \"decorrelated_jitter\"\njitter = \"full\"\n",
        )
        .unwrap_err();
        assert!(
            same_layer
                .to_string()
                .starts_with("instances.a.retry.jitter"),
            "{same_layer}"
        );
    }
}

// Ordered fail-fast: the stream ends at the earliest failed input, so when an earlier input
// fails after a later one did, the tasks between the two are aborted at once too.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_ordered_fail_fast_fan_out_cuts_again_at_an_earlier_failure() {
    use futures_util::StreamExt as _;
    static PLAN: [(u64, bool, bool); 5] = [
        (5_000, false, false),
        (2_000, true, false),
        (3_000, false, true),
        (1_000, true, false),
        (100, false, false),
    ];
    let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let results = tidewall::fan_out::FanOut::new(5)
        .unwrap()
        .ordered()
        .try_run_iter(0..5, fan_out_work(&PLAN, &ran));
    let mut results = std::pin::pin!(results);
    assert_eq!(results.next().await.map(|r| r.ok()), Some(Some(0)));
    assert!(
        !ran.load(std::sync::atomic::Ordering::SeqCst),
        "input 2 ran to its end after input 1 failed"
    );
    assert!(matches!(results.next().await, Some(Err(_))));
    assert!(results.next().await.is_none());
}

// The same, from LIFO, whose queue notes when it began to stand: "counts from when it began to
// stand if the bulkhead knew it", so after 200 ms (past `interval`) a caller joining just
// after the switch is cut to `target`.
#[test]
fn codel_switched_on_from_lifo_counts_the_queue_from_its_start() {
    let clock = FakeClock::new();
    let with = |discipline| {
        Bulkhead::builder(1)
            .max_queue(4)
            .max_wait(Duration::from_secs(10))
            .discipline(discipline)
    };
    let bulkhead = with(QueueDiscipline::Lifo)
        .runtime(clock.clone())
        .build()
        .unwrap();
    let _held = bulkhead.try_acquire().unwrap();
    let mut standing = Box::pin(bulkhead.acquire());
    assert!(poll_once(standing.as_mut()).is_pending());
    clock.advance(ms(200));
    bulkhead
        .reconfigure(with(QueueDiscipline::Codel {
            target: ms(5),
            interval: ms(100),
        }))
        .unwrap();
    let mut joining = Box::pin(bulkhead.acquire());
    assert!(poll_once(joining.as_mut()).is_pending());
    clock.advance(ms(5));
    assert!(
        matches!(
            poll_once(joining.as_mut()),
            Poll::Ready(Err(Rejected::BulkheadFull))
        ),
        "joined a queue standing 200 ms: its wait is cut to 5 ms"
    );
}

// The same, from a FIFO queue whose first waiter ever was critical (found by a doc audit):
// the priority bookkeeping was made by that waiter's own arrival, after the moment the queue
// began to stand was to be noted, so CoDel counted from the switch and let the joiner wait.
#[test]
fn codel_switched_on_counts_a_queue_from_its_first_priority_waiter() {
    for first in [Priority::Critical, Priority::Sheddable] {
        let clock = FakeClock::new();
        let with = |discipline| {
            AdaptiveLimiter::builder(FixedLimit(1))
                .max_queue(4)
                .max_wait(None)
                .discipline(discipline)
        };
        let limiter = with(QueueDiscipline::Fifo)
            .runtime(clock.clone())
            .build()
            .unwrap();
        let _held = limiter.try_acquire().unwrap();
        let waiting = limiter.with_priority(first);
        let mut standing = Box::pin(waiting.admit(Wait::Until(Deadline::none())));
        assert!(poll_once(standing.as_mut()).is_pending());
        clock.advance(ms(200));
        limiter
            .reconfigure(with(QueueDiscipline::Codel {
                target: ms(5),
                interval: ms(100),
            }))
            .unwrap();
        let mut joining = Box::pin(limiter.admit(Wait::Until(Deadline::none())));
        assert!(poll_once(joining.as_mut()).is_pending());
        clock.advance(ms(5));
        assert!(
            matches!(
                poll_once(joining.as_mut()),
                Poll::Ready(Err(Rejected::BulkheadFull))
            ),
            "{first:?} first: joined a queue standing 200 ms, its wait is cut to 5 ms"
        );
    }
}

#[cfg(all(feature = "serde", feature = "toml"))]
mod retry_layers_above {
    use tidewall::config::Config;

    // `RetryConfig::jitter`: not with decorrelated jitter "in the layer that names it or a
    // layer above it": an instance's own jitter over a decorrelated schedule from the defaults
    // is refused at the instance's key, never silently ignored.
    #[test]
    fn a_jitter_above_an_inherited_decorrelated_schedule_is_refused() {
        let refused = Config::from_toml(
            "[defaults.retry]\nbackoff = \"decorrelated_jitter\"\n\
             [instances.a.retry]\njitter = \"full\"\n",
        )
        .unwrap_err();
        assert_eq!(refused.path(), "instances.a.retry.jitter", "{refused}");
    }
}
