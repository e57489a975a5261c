//! HTTP clients from a registry (`Registry::http_client`) and `ClientPolicies::reconfigure`:
//! each section a per-host stage, the `[http]` rules, and reloads that retune the tables in
//! place (state kept), add and remove stages, keep a request in flight on the settings it
//! started with, and refuse what they cannot apply with the old configuration still in force.
//! In virtual time, the reload scenario on every runtime adapter.
#![cfg(all(feature = "toml", feature = "http", feature = "metrics"))]

mod common;
mod keyed_support;
mod support;

use keyed_support::client::{Answer, Hosts, auth, get, status};
use keyed_support::secs;
use support::ms;
use tidewall::Error;
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::config::{Config, Problem, Registry};
use tidewall::http::{ClientPolicies, Overrides};
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::testing::Clocked;

fn config(text: &str) -> Config {
    Config::from_toml(text).unwrap_or_else(|e| panic!("a valid configuration: {e}\n{text}"))
}

/// Three attempts 10 ms apart, a breaker per host opening on 3 failures in a row for 10 s, a
/// 1 s deadline.
const OUTBOUND: &str = r#"
    [instances.outbound]
    deadline = "1s"
    http = {}
    [instances.outbound.retry]
    backoff = "constant"
    initial_delay = "10ms"
    jitter = "none"
    max_attempts = 3
    [instances.outbound.breaker]
    consecutive_failures = 3
    failure_rate = "off"
    break_duration = "10s"
"#;

async fn sent<R: Clock>(
    policies: &ClientPolicies<R>,
    hosts: &Hosts<R>,
    uri: &str,
) -> Result<http::Response<()>, Error<std::io::Error>> {
    policies
        .run(get(uri), Overrides::new(), |request| hosts.send(request))
        .await
}

/// The file's sections become the client's stages; a reload retunes them for every handle,
/// keeps each host's breaker state, adds and removes stages, and a request in flight keeps
/// the retry schedule it started with.
async fn a_reload_reaches_the_client<R: Runtime>(rt: Clocked<R>) {
    let registry = Registry::builder(config(OUTBOUND))
        .runtime(rt.clone())
        .build()
        .unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    assert!(
        registry.breakers().is_empty(),
        "no plain breaker for an HTTP client"
    );
    assert_eq!(registry.http_clients().len(), 1);
    assert!(outbound.bulkheads().is_none(), "no [bulkhead], no bulkhead");
    let hosts = Hosts::new(&rt);

    // Three attempts, as the file says.
    hosts.play(
        "flaky:80",
        [
            Answer::Status(503),
            Answer::Status(503),
            Answer::Status(200),
        ],
    );
    assert_eq!(
        status(&sent(&outbound, &hosts, "http://flaky/").await),
        Some(200)
    );
    assert_eq!(hosts.seen("flaky:80"), 3);

    // A host goes down: its breaker opens.
    hosts.play("down:80", [Answer::Status(503)]);
    let _ = sent(&outbound, &hosts, "http://down/").await;
    let down = auth("http://down/");
    assert_eq!(outbound.breakers().unwrap().state(&down), Some(State::Open));

    // A request in flight: its first attempt fails, and it sleeps 10 ms before its second.
    hosts.play(
        "slow:80",
        [
            Answer::Status(503),
            Answer::Status(503),
            Answer::Status(200),
        ],
    );
    let in_flight = {
        let (outbound, hosts) = (outbound.clone(), hosts.clone());
        rt.spawn(async move { status(&sent(&outbound, &hosts, "http://slow/").await) })
    };
    rt.sleep(ms(5)).await;
    assert_eq!(hosts.seen("slow:80"), 1);

    // Reload: one attempt only, a bulkhead of one per host, the breaker's thresholds changed
    // but its window's shape kept.
    let reload = registry
        .reload(config(
            r#"
            [instances.outbound]
            deadline = "1s"
            http = {}
            [instances.outbound.retry]
            max_attempts = 1
            [instances.outbound.breaker]
            consecutive_failures = 5
            failure_rate = "off"
            break_duration = "10s"
            [instances.outbound.bulkhead]
            max_concurrent = 1
            max_queue = 0
        "#,
        ))
        .unwrap();
    assert!(reload.reset.is_empty(), "{reload:?}");
    assert_eq!(
        outbound.breakers().unwrap().state(&down),
        Some(State::Open),
        "the host's breaker kept its state"
    );
    assert_eq!(outbound.bulkheads().unwrap().name(), "outbound");

    // The request in flight retries on its old schedule (three attempts).
    assert_eq!(in_flight.await.unwrap(), Some(200));
    assert_eq!(hosts.seen("slow:80"), 3);

    // A request after the reload makes one attempt.
    hosts.play("once:80", [Answer::Status(503)]);
    assert_eq!(
        status(&sent(&outbound, &hosts, "http://once/").await),
        Some(503)
    );
    assert_eq!(hosts.seen("once:80"), 1);

    // The breaker section removed: the stage is gone, and the open host is called again.
    registry
        .reload(config(
            r#"
            [instances.outbound]
            http = {}
        "#,
        ))
        .unwrap();
    assert!(outbound.breakers().is_none());
    hosts.play("down:80", [Answer::Status(200)]);
    assert_eq!(
        status(&sent(&outbound, &hosts, "http://down/").await),
        Some(200)
    );
}

#[test]
fn a_reload_reaches_the_client_on_every_runtime() {
    on_every_runtime!(a_reload_reaches_the_client);
}

/// A reload the client cannot take is refused whole, the old settings still in force.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reload_the_client_cannot_take_is_refused() {
    let registry = Registry::new(config(OUTBOUND)).unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    let cases = [
        (
            "retry_statuses = [1000]",
            "retry_statuses",
            "1000 is not an error status (400 to 999)",
        ),
        (
            "fail_statuses = [200]",
            "fail_statuses",
            "200 is not an error status (400 to 999)",
        ),
        (
            "replay_methods = [\"PO ST\"]",
            "replay_methods",
            "\"PO ST\" is not an HTTP method",
        ),
        (
            "replay_methods = [\"post\"]",
            "replay_methods",
            "\"post\": methods are case-sensitive, write \"POST\"",
        ),
        (
            "retry_statuses = [409], fail_statuses = [409]",
            "fail_statuses",
            "a status is retried or failed, not both",
        ),
    ];
    for (rules, key, message) in cases {
        let text = OUTBOUND.replace("http = {}", &format!("http = {{ {rules} }}"));
        let path = format!("instances.outbound.http.{key}");
        let refused = Config::from_toml(&text).unwrap_err();
        assert_eq!(refused.to_string(), format!("{path}: {message}"));
        // Read without the check, the reload refuses it the same way.
        let unchecked: Config = toml::from_str(&text).unwrap();
        let refused = registry.reload(unchecked).unwrap_err();
        assert_eq!(refused.to_string(), format!("{path}: {message}"));
    }
    // The tables' bounds are fixed while the registry holds the client.
    let bigger = format!("{OUTBOUND}\n[instances.outbound.keys]\nmax_keys = 20000\n");
    let refused = registry.reload(config(&bigger)).unwrap_err();
    assert_eq!(refused.path(), "instances.outbound.keys.max_keys");
    assert!(matches!(refused.problem(), Problem::Fixed));
    let ttl = format!("{OUTBOUND}\n[instances.outbound.keys]\nidle_ttl = \"5m\"\n");
    let refused = registry.reload(config(&ttl)).unwrap_err();
    assert_eq!(refused.path(), "instances.outbound.keys.idle_ttl");
    assert!(matches!(refused.problem(), Problem::Fixed));
    // Nothing changed: three attempts still.
    let hosts = Hosts::new(&tidewall::rt::Tokio);
    hosts.play("a:80", [Answer::Status(503)]);
    let answer = outbound
        .run(get("http://a/"), Overrides::new(), |request| {
            hosts.send(request)
        })
        .await;
    assert_eq!(status(&answer), Some(503));
    assert_eq!(hosts.seen("a:80"), 3);
}

/// `[http]`'s rules reach the client: a status retried, one failed, 4xx ignored, POST sent
/// again.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_http_section_sets_what_is_retried_and_counted() {
    let with_rules = OUTBOUND.replace(
        "http = {}",
        r#"http = { retry_statuses = [521], fail_statuses = [503], client_errors = "ignored", replay_methods = ["POST"] }"#,
    );
    let registry = Registry::new(config(&with_rules)).unwrap();
    let outbound = registry.http_client("outbound").unwrap();
    let hosts = Hosts::new(&tidewall::rt::Tokio);
    let send = |request| {
        let (outbound, hosts) = (&outbound, &hosts);
        async move {
            outbound
                .run(request, Overrides::new(), |r| hosts.send(r))
                .await
        }
    };
    hosts.play("cdn:80", [Answer::Status(521), Answer::Status(200)]);
    assert_eq!(status(&send(get("http://cdn/")).await), Some(200));
    assert_eq!(hosts.seen("cdn:80"), 2, "521 retried");
    hosts.play("busy:80", [Answer::Status(503)]);
    assert_eq!(status(&send(get("http://busy/")).await), Some(503));
    assert_eq!(hosts.seen("busy:80"), 1, "503 failed, not retried");
    hosts.play("orders:80", [Answer::Status(502), Answer::Status(201)]);
    let post = keyed_support::client::request(http::Method::POST, "http://orders/");
    assert_eq!(status(&send(post).await), Some(201));
    assert_eq!(hosts.seen("orders:80"), 2, "POST sent again");
    // 404s ignored: the host's breaker counts none of them.
    hosts.play("gone:80", [Answer::Status(404)]);
    for _ in 0..5 {
        let _ = send(get("http://gone/")).await;
    }
    let counts = outbound
        .breakers()
        .unwrap()
        .counts(&auth("http://gone/"))
        .unwrap();
    assert_eq!(counts.calls, 0, "{counts:?}");
}

/// `reconfigure` in code: the adaptive limit keeps what it learned unless its algorithm
/// changes, and the bounds cannot change.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn reconfigure_keeps_what_the_tables_learned() {
    use tidewall::adaptive::{AdaptiveLimiter, Aimd, AnyAlgorithm};
    let aimd = |max: u32| {
        let algorithm = Aimd::builder()
            .min_limit(1)
            .initial_limit(10)
            .max_limit(max)
            .build()
            .unwrap();
        Some(AdaptiveLimiter::builder(AnyAlgorithm::from(algorithm)))
    };
    let policies = ClientPolicies::builder()
        .bulkhead(None)
        .adaptive(aimd(100))
        .breaker(Some(CircuitBreaker::builder().consecutive_failures(1)))
        .build()
        .unwrap();
    let host = auth("http://a/");
    let limits = policies.adaptive_limiters().unwrap();
    // A full limit's success teaches AIMD to grow.
    let held: Vec<_> = (0..9).map(|_| limits.try_acquire(&host).unwrap()).collect();
    limits.try_acquire(&host).unwrap().success();
    drop(held);
    let learned = limits.limit(&host).unwrap();
    assert!(learned > 10, "{learned}");
    policies
        .breakers()
        .unwrap()
        .try_acquire(&host)
        .unwrap()
        .failure();

    let same = ClientPolicies::builder()
        .bulkhead(None)
        .adaptive(aimd(100))
        .breaker(Some(CircuitBreaker::builder().consecutive_failures(1)));
    let retuned = policies.reconfigure(same).unwrap();
    assert!(
        !retuned.relearning && retuned.breakers_reset == 0,
        "{retuned:?}"
    );
    assert_eq!(
        policies.adaptive_limiters().unwrap().limit(&host),
        Some(learned)
    );
    assert_eq!(policies.breakers().unwrap().state(&host), Some(State::Open));

    let other = ClientPolicies::builder()
        .bulkhead(None)
        .adaptive(aimd(50))
        .breaker(Some(
            CircuitBreaker::builder().window(tidewall::breaker::Window::Count { calls: 10 }),
        ));
    let retuned = policies.reconfigure(other).unwrap();
    assert!(
        retuned.relearning && retuned.breakers_reset == 1,
        "{retuned:?}"
    );
    assert_eq!(policies.adaptive_limiters().unwrap().limit(&host), Some(10));
    assert_eq!(
        policies.breakers().unwrap().state(&host),
        Some(State::Closed)
    );

    let refused = policies.reconfigure(ClientPolicies::builder().max_authorities(5));
    let Err(tidewall::ConfigError::Conflict { reason }) = refused else {
        panic!("{refused:?}")
    };
    assert!(
        reason.starts_with("max_authorities and idle_ttl bound"),
        "{reason}"
    );
}

/// A listener told of a reconfiguration's reset that reconfigures the same stack is refused
/// at once, not left waiting for the reconfiguration it is part of.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_reconfiguration_from_its_own_listener_is_refused() {
    use std::sync::{Arc, Mutex, OnceLock};
    use tidewall::breaker::Window;
    use tidewall::telemetry::{Event, EventKind};

    let stack: Arc<OnceLock<ClientPolicies>> = Arc::default();
    let answers: Arc<Mutex<Vec<String>>> = Arc::default();
    let (inside, told) = (Arc::clone(&stack), Arc::clone(&answers));
    let listener = move |event: &Event<'_>| {
        if let (EventKind::StateChanged(_), Some(policies)) = (event.kind, inside.get()) {
            let again = policies.reconfigure(ClientPolicies::builder());
            told.lock().unwrap().push(format!("{again:?}"));
        }
    };
    let breaker = |calls| {
        CircuitBreaker::builder()
            .consecutive_failures(1)
            .window(Window::Count { calls })
    };
    let policies = ClientPolicies::builder()
        .breaker(Some(breaker(10).on_event(listener)))
        .build()
        .unwrap();
    let _ = stack.set(policies.clone());
    let host = auth("http://a/");
    policies
        .breakers()
        .unwrap()
        .try_acquire(&host)
        .unwrap()
        .failure();
    answers.lock().unwrap().clear();

    // Another window shape resets the open host: its listener reconfigures, and is refused.
    let retuned = policies
        .reconfigure(ClientPolicies::builder().breaker(Some(breaker(20))))
        .unwrap();
    assert_eq!(retuned.breakers_reset, 1);
    let answers = answers.lock().unwrap().clone();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(
        answers[0].contains("a reconfiguration from a listener of the one in progress"),
        "{answers:?}"
    );
    // The stack is the reconfiguration's, whole.
    let window = policies.breakers().unwrap().policy().window();
    assert_eq!(window, Window::Count { calls: 20 });
}

/// A stage a reconfiguration adds carries the stack's name, whatever the settings' builder
/// says; the gauges of a stage it removes read 0 from the next scrape.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn added_stages_take_the_stacks_name_and_removed_ones_read_zero() {
    use support::snapshot::{gauge, gauges_during};
    use tidewall::adaptive::{AdaptiveLimiter, Aimd, AnyAlgorithm};

    let policies = ClientPolicies::builder()
        .name("payments")
        .breaker(Some(CircuitBreaker::builder().consecutive_failures(1)))
        .build()
        .unwrap();
    let aimd = Aimd::builder().build().unwrap();
    let renamed = ClientPolicies::builder()
        .name("elsewhere")
        .bulkhead(None)
        .adaptive(Some(AdaptiveLimiter::builder(AnyAlgorithm::from(aimd))))
        .rate_limit(Some(tidewall::rate::KeyedRateLimiter::builder(10, secs(1))))
        .breaker(Some(CircuitBreaker::builder().consecutive_failures(1)));
    policies.reconfigure(renamed).unwrap();
    assert_eq!(policies.name(), "payments");
    assert_eq!(policies.adaptive_limiters().unwrap().name(), "payments");
    assert_eq!(policies.rate_limiters().unwrap().name(), "payments");

    let host = auth("http://down/");
    policies
        .breakers()
        .unwrap()
        .try_acquire(&host)
        .unwrap()
        .failure();
    let open_hosts = || {
        let all = gauges_during(|| policies.record_gauges());
        gauge(&all, "tidewall_keyed_breaker_keys", &[("state", "open")])
    };
    assert_eq!(open_hosts(), Some(1.0));
    policies
        .reconfigure(ClientPolicies::builder().breaker(None))
        .unwrap();
    assert_eq!(open_hosts(), Some(0.0));
}

/// Reloads racing reconfigurations from code, whose breaker resets tell a listener that looks
/// the registry up: neither waits for the other for ever, and each ends whole.
#[test]
fn reloads_and_reconfigurations_racing_never_wait_for_each_other() {
    use std::sync::mpsc;
    use std::sync::{Arc, OnceLock};
    use tidewall::breaker::Window;
    use tidewall::telemetry::EventKind;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let text = |calls: u32| {
        format!(
            "[instances.outbound]\nhttp = {{}}\n[instances.outbound.breaker]\n\
             consecutive_failures = 1\nwindow_calls = {calls}\n"
        )
    };
    let slot: Arc<OnceLock<Arc<Registry>>> = Arc::default();
    let inside = Arc::clone(&slot);
    let registry = Arc::new(
        Registry::builder(config(&text(10)))
            .on_event(move |event| {
                // Told of a reset: look the registry up, as a health endpoint would.
                if let (EventKind::StateChanged(_), Some(registry)) = (event.kind, inside.get()) {
                    let _ = registry.breakers();
                    let _ = registry.http_clients();
                }
            })
            .build()
            .unwrap(),
    );
    let _ = slot.set(Arc::clone(&registry));
    let outbound = registry.http_client("outbound").unwrap();
    let (done, finished) = mpsc::channel();
    let reloading = {
        let (registry, done) = (Arc::clone(&registry), done.clone());
        std::thread::spawn(move || {
            for round in 0..200 {
                let calls = if round % 2 == 0 { 20 } else { 10 };
                registry.reload(config(&text(calls))).unwrap();
            }
            done.send(()).unwrap();
        })
    };
    let reconfiguring = {
        let outbound = outbound.clone();
        std::thread::spawn(move || {
            for round in 0..200u32 {
                // An open host, so that a change of window shape resets it with its event.
                let host = auth(&format!("http://h{}/", round % 4));
                if let Ok(permit) = outbound.breakers().unwrap().try_acquire(&host) {
                    permit.failure();
                }
                let calls = if round % 2 == 0 { 30 } else { 40 };
                let breaker = CircuitBreaker::builder()
                    .consecutive_failures(1)
                    .window(Window::Count { calls });
                outbound
                    .reconfigure(ClientPolicies::builder().breaker(Some(breaker)))
                    .unwrap();
            }
            done.send(()).unwrap();
        })
    };
    for _ in 0..2 {
        finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("a reload and a reconfiguration waited for each other");
    }
    reloading.join().unwrap();
    reconfiguring.join().unwrap();
    let window = outbound.breakers().unwrap().policy().window();
    assert!(
        matches!(
            window,
            Window::Count {
                calls: 10 | 20 | 30 | 40
            }
        ),
        "{window:?}"
    );
}

/// `Reload::reset` names each instance once: an HTTP client whose host's breaker reset and a
/// plain breaker of the same instance, both reset by one change of window shape.
#[tokio::test(start_paused = true)]
async fn a_reload_names_an_instance_reset_twice_once() {
    let text = |calls: u32| {
        format!(
            "[instances.api]\nhttp = {{}}\n[instances.api.breaker]\nconsecutive_failures = 1\n\
             window_calls = {calls}\n"
        )
    };
    let registry = Registry::new(config(&text(10))).unwrap();
    let client = registry.http_client("api").unwrap();
    let plain = registry.breaker("api").unwrap();
    let _ = plain.call(|| async { Err::<(), _>("down") }).await;
    assert_eq!(plain.state(), State::Open);
    let answer = client
        .run(
            http::Request::get("http://a/").body(()).unwrap(),
            Overrides::new(),
            |_request| async { Err::<http::Response<()>, _>(std::io::Error::other("down")) },
        )
        .await;
    assert!(answer.is_err());
    let reload = registry.reload(config(&text(20))).unwrap();
    assert_eq!(reload.reset, [tidewall::Name::from_static("api")]);
    assert_eq!(plain.state(), State::Closed);
}

/// `Reload::relearning` names each instance once: an HTTP client's per-host limits, a plain
/// adaptive limiter and a keyed table of the same instance, all relearning from one change of
/// algorithm.
#[tokio::test(start_paused = true)]
async fn a_reload_names_an_instance_relearning_thrice_once() {
    let text = |initial: u32| {
        format!(
            "[instances.api]\nhttp = {{}}\n[instances.api.adaptive]\nalgorithm = \"aimd\"\n\
             min_limit = 1\ninitial_limit = {initial}\n[instances.api.keys]\nmax_keys = 10\n"
        )
    };
    let registry = Registry::new(config(&text(4))).unwrap();
    let client = registry.http_client("api").unwrap();
    let plain = registry.adaptive_limiter("api").unwrap();
    let keyed = registry.keyed_adaptive_limiter::<String>("api").unwrap();
    let answer = client
        .run(
            http::Request::get("http://a/").body(()).unwrap(),
            Overrides::new(),
            |_request| async { Ok::<_, std::io::Error>(http::Response::new(())) },
        )
        .await;
    assert!(answer.is_ok());
    keyed.try_acquire(&"a".to_owned()).unwrap().success();
    let reload = registry.reload(config(&text(8))).unwrap();
    assert_eq!(reload.relearning, [tidewall::Name::from_static("api")]);
    assert_eq!(plain.limit(), 8);
    assert_eq!(keyed.limit(&"a".to_owned()), Some(8));
}
