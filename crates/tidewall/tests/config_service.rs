//! The `config_service` example served on a loopback port and driven over HTTP: every
//! request answered, the rate limit exact, the metrics adding up to what was sent, the health
//! page, the breaker, and live reloads of the watched file (valid and invalid).
//!
//! One test in its own binary: it installs the global Prometheus recorder.
//!
//! The file served is the example's own with roomier real-time bounds (see [`roomy`]): its
//! 1 ms upstream is meant to meet them, and a loaded machine must not turn a stall into a 504
//! or a 503 that every exact count below would then miss.

#[path = "../examples/config_service/app.rs"]
mod app;

use std::net::SocketAddr;
use std::time::Duration;

use app::{App, CONFIG, FLAKY, QUOTES, Reply, Scrape};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::Value;
use tidewall::config::Config;
use tokio::net::TcpListener;

/// How long the file watcher gets to apply an edit: a bound on a hang, not a timing claim.
const RELOAD_WITHIN: Duration = Duration::from_secs(60);

/// How long the reload counters must stay put when nobody edits the file: ten debounce
/// periods of the app's watcher.
const QUIET_FOR: Duration = Duration::from_secs(1);

/// The example's configuration with its real-time bounds raised: a deadline of 20 s, attempt
/// timeouts of 10 s and a bulkhead wait of 10 s (from 3 s, 1 s and 2 s), so that a stalled
/// machine does not time out a 1 ms upstream or a queued request. The deadline stays below
/// the breaker's 30 s break, as the example's does: a retry that could wait out the break
/// within the deadline would make a probe attempt the exact counts below do not expect.
/// Every other line is the example's.
fn roomy(config: &str) -> String {
    let mut out = String::with_capacity(config.len());
    let mut section = "";
    let mut raised = 0;
    for line in config.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            section = trimmed;
        }
        let key = trimmed.split('=').next().map(str::trim);
        let roomier = match (section, key) {
            ("[defaults]", Some("deadline")) => Some("deadline = \"20s\""),
            ("[defaults]", Some("attempt_timeout")) => Some("attempt_timeout = \"10s\""),
            ("[defaults.bulkhead]", Some("max_wait")) => Some("max_wait = \"10s\""),
            _ => None,
        };
        raised += usize::from(roomier.is_some());
        out.push_str(roomier.unwrap_or(line));
        out.push('\n');
    }
    assert_eq!(raised, 3, "the example's bounds moved: update `roomy`");
    out
}

/// Sends `n` quote requests at once and returns every reply, in request order.
async fn quotes_at_once(addr: SocketAddr, n: u32) -> Vec<Reply> {
    let calls: Vec<_> = (0..n)
        .map(|i| tokio::spawn(async move { app::get(addr, &format!("/quote/SYM{i}")).await }))
        .collect();
    let mut replies = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        let reply = call
            .await
            .expect("the request task")
            .unwrap_or_else(|e| panic!("request {i} got no response: {e}"));
        replies.push(reply);
    }
    replies
}

/// How many replies have each of 200 and 429; panics on any other status, and on a 429
/// without a `Retry-After` of whole seconds.
fn tally(replies: &[Reply]) -> (u32, u32) {
    let (mut ok, mut limited) = (0, 0);
    for reply in replies {
        match reply.status {
            200 => {
                let body = reply.json().expect("a JSON quote");
                assert!(body["price"].is_f64(), "{body}");
                ok += 1;
            }
            429 => {
                let after = reply.header("retry-after").expect("a 429 says when");
                let seconds: u64 = after.parse().expect("Retry-After in seconds");
                assert!(seconds > 0, "a refill is minutes away: {after}");
                limited += 1;
            }
            other => panic!("unexpected status {other}: {reply:?}"),
        }
    }
    (ok, limited)
}

/// Checks one series of a scrape, exactly.
fn assert_series(scrape: &Scrape, name: &str, labels: &[(&str, &str)], want: f64) {
    assert_eq!(
        scrape.value(name, labels),
        Some(want),
        "{name} with labels {labels:?}"
    );
}

/// The pipeline figures of `quotes` and its limiter's: calls that passed and were refused,
/// the limiter's refusals, and the cells left.
fn assert_quotes(scrape: &Scrape, passed: u32, refused: u32, available: u32) {
    let calls = "tidewall_calls_total";
    let pipeline = [("policy", "pipeline"), ("name", QUOTES)];
    let [policy, name] = pipeline;
    assert_series(
        scrape,
        calls,
        &[policy, name, ("outcome", "success")],
        f64::from(passed),
    );
    assert_series(
        scrape,
        calls,
        &[policy, name, ("outcome", "rejected")],
        f64::from(refused),
    );
    for outcome in ["failure", "timed_out", "cancelled", "ignored"] {
        assert_series(scrape, calls, &[policy, name, ("outcome", outcome)], 0.0);
    }
    let rate = [("policy", "rate"), name, ("reason", "rate_limited")];
    assert_series(
        scrape,
        "tidewall_rejections_total",
        &rate,
        f64::from(refused),
    );
    let late = [("policy", "rate"), name, ("reason", "deadline_exceeded")];
    assert_series(scrape, "tidewall_rejections_total", &late, 0.0);
    assert_series(
        scrape,
        "tidewall_rate_limit_available",
        &[name],
        f64::from(available),
    );
}

/// The reload counters (each is exported from its first count on: none yet reads as 0).
fn assert_reloads(scrape: &Scrape, applied: u32, refused: u32) {
    let name = "tidewall_config_reloads_total";
    for (outcome, want) in [("applied", applied), ("refused", refused)] {
        let labels = [("registry", app::REGISTRY), ("outcome", outcome)];
        let seen = scrape.value(name, &labels).unwrap_or(0.0);
        assert_eq!(
            Some(seen),
            Some(f64::from(want)),
            "{name}{{outcome={outcome:?}}}"
        );
    }
}

/// Scrapes `/metrics` every 50 ms for `QUIET_FOR` and fails if the reload counters move
/// from `applied` and `refused`: with no edit, there is nothing to reload.
async fn assert_no_reload(addr: SocketAddr, applied: u32, refused: u32) {
    let until = tokio::time::Instant::now() + QUIET_FOR;
    while tokio::time::Instant::now() < until {
        let scrape = app::scrape(addr).await.expect("/metrics");
        assert_reloads(&scrape, applied, refused);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET /health`: its status and its JSON.
async fn health(addr: SocketAddr) -> (u16, Value) {
    let reply = app::get(addr, "/health").await.expect("/health answers");
    let body = reply.json().expect("/health is JSON");
    (reply.status, body)
}

/// The names of the object `value`, sorted.
fn names(value: &Value) -> Vec<String> {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("an object: {value}"));
    object.keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_service_limits_reloads_and_reports_exactly() {
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this process");

    // What the test relies on, read from the example's own file (as served).
    let served = roomy(CONFIG);
    let config = Config::from_toml(&served).expect("the example's configuration");
    let limit = config.instances[QUOTES]
        .rate_limit
        .as_ref()
        .expect("a limit");
    let burst = limit.burst.expect("a burst");
    assert_eq!(
        limit.period,
        Some(Duration::from_secs(3600)),
        "no refill while the test runs"
    );
    let flaky = config.instance(FLAKY).expect("the flaky instance");
    let attempts = flaky
        .backoff()
        .expect("a retry schedule")
        .max_attempts_total();
    let breaker = config.instances[FLAKY].breaker.as_ref().expect("a breaker");
    let trips_at = breaker
        .consecutive_failures
        .expect("a run of failures trips it");
    assert_eq!(
        trips_at % attempts,
        0,
        "the breaker opens on a call's last attempt"
    );
    let calls_to_open = trips_at / attempts;

    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("tidewall.toml");
    std::fs::write(&path, &served).expect("the configuration written");
    let app = App::new(&path, metrics).expect("the app starts");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    let server = tokio::spawn(app.serve(listener));

    // 1. A burst of concurrent requests: every one answered, exactly `burst` admitted.
    let sent = 12;
    let replies = quotes_at_once(addr, sent).await;
    assert_eq!(
        replies.len(),
        usize::try_from(sent).unwrap(),
        "no request lost"
    );
    assert_eq!(tally(&replies), (burst, sent - burst));
    let scrape = app::scrape(addr).await.expect("/metrics");
    assert_quotes(&scrape, burst, sent - burst, 0);
    assert_reloads(&scrape, 0, 0);

    // 2. The health page lists every policy: all up.
    let (status, body) = health(addr).await;
    assert_eq!(
        (status, &body["status"]),
        (200, &Value::from("up")),
        "{body}"
    );
    assert_eq!(names(&body["breakers"]), [FLAKY, QUOTES], "{body}");
    assert_eq!(names(&body["bulkheads"]), [QUOTES], "{body}");
    assert_eq!(names(&body["adaptive_limiters"]), [FLAKY], "{body}");
    let initial_limit = config.instances[FLAKY]
        .adaptive
        .as_ref()
        .and_then(|a| a.initial_limit)
        .expect("the flaky instance's adaptive limit");
    assert_eq!(
        body["adaptive_limiters"][FLAKY]["limit"], initial_limit,
        "{body}"
    );
    assert_eq!(names(&body["rate_limiters"]), [QUOTES], "{body}");
    assert_eq!(names(&body["retry_budgets"]), [FLAKY, QUOTES], "{body}");
    assert_eq!(body["breakers"][QUOTES], "closed", "{body}");
    assert_eq!(body["breakers"][FLAKY], "closed", "{body}");
    let quotes_limiter = &body["rate_limiters"][QUOTES];
    assert_eq!(quotes_limiter["available"], 0, "{body}");
    assert_eq!(quotes_limiter["burst"], burst, "{body}");
    let bulkhead = &body["bulkheads"][QUOTES];
    assert_eq!(bulkhead["in_flight"], 0, "{body}");
    assert_eq!(bulkhead["queued"], 0, "{body}");
    let capacity = config
        .defaults
        .bulkhead
        .as_ref()
        .and_then(|b| b.max_concurrent);
    assert_eq!(
        bulkhead["capacity"].as_u64(),
        capacity.map(|c| c as u64),
        "{body}"
    );
    assert!(
        body["retry_budgets"][QUOTES]["balance"].as_u64().is_some(),
        "{body}"
    );

    // 3. The failing upstream, through its own pipeline: each call makes `attempts`
    // attempts, the breaker counts each failure and opens at `trips_at` in a row.
    for call in 1..=calls_to_open {
        let reply = app::get(addr, "/quote/FAIL").await.expect("a response");
        assert_eq!(
            reply.status, 502,
            "call {call}: the upstream's failure: {reply:?}"
        );
    }
    let reply = app::get(addr, "/quote/FAIL").await.expect("a response");
    assert_eq!(reply.status, 503, "the breaker refuses now: {reply:?}");
    assert_eq!(
        reply.json().expect("JSON")["reason"],
        "circuit_open",
        "{reply:?}"
    );
    assert!(reply.header("retry-after").is_some(), "{reply:?}");
    let (status, body) = health(addr).await;
    assert_eq!(
        (status, &body["status"]),
        (503, &Value::from("degraded")),
        "{body}"
    );
    assert_eq!(body["breakers"][FLAKY], "open", "{body}");
    assert_eq!(body["breakers"][QUOTES], "closed", "{body}");
    let scrape = app::scrape(addr).await.expect("/metrics");
    assert_series(
        &scrape,
        "tidewall_breaker_state",
        &[("name", FLAKY), ("state", "open")],
        1.0,
    );
    assert_series(
        &scrape,
        "tidewall_breaker_state",
        &[("name", FLAKY), ("state", "closed")],
        0.0,
    );
    assert_series(
        &scrape,
        "tidewall_breaker_state",
        &[("name", QUOTES), ("state", "closed")],
        1.0,
    );
    let flaky_calls = |outcome| {
        [
            ("policy", "pipeline"),
            ("name", FLAKY),
            ("outcome", outcome),
        ]
    };
    let calls = "tidewall_calls_total";
    assert_series(
        &scrape,
        calls,
        &flaky_calls("failure"),
        f64::from(calls_to_open),
    );
    assert_series(&scrape, calls, &flaky_calls("rejected"), 1.0);
    let attempt_failures = f64::from(trips_at);
    let breaker_calls = [
        ("policy", "breaker"),
        ("name", FLAKY),
        ("outcome", "failure"),
    ];
    assert_series(&scrape, calls, &breaker_calls, attempt_failures);
    // Each failed call was one drop for AIMD: the limit times 0.9 (its default) per call,
    // truncated; the call the breaker refused taught it nothing.
    let mut learned = initial_limit;
    for _ in 0..calls_to_open {
        learned = learned * 9 / 10;
    }
    assert_series(
        &scrape,
        "tidewall_adaptive_limit",
        &[("name", FLAKY)],
        f64::from(learned),
    );
    let retries = [("policy", "pipeline"), ("name", FLAKY)];
    let retried = f64::from(calls_to_open * (attempts - 1));
    assert_series(&scrape, "tidewall_retries_total", &retries, retried);
    // The quotes figures did not move.
    assert_quotes(&scrape, burst, sent - burst, 0);

    // 4. A deployment raises the limit: 20 an hour, bursts of 20. The cells spent stay
    // spent (`RateLimiter::reconfigure` rescales them), so exactly 20 - 5 = 15 more pass.
    let raised = 20;
    let left = raised - burst;
    app::replace_file(&path, &app::with_quote_limit(&served, raised, raised)).expect("the edit");
    let reloads = "tidewall_config_reloads_total";
    let applied = [("registry", app::REGISTRY), ("outcome", "applied")];
    let scrape = app::wait_for(addr, reloads, &applied, 1.0, RELOAD_WITHIN)
        .await
        .expect("the edit applied");
    assert_reloads(&scrape, 1, 0);
    // The watcher reads the file to reload it: that read is no edit.
    assert_no_reload(addr, 1, 0).await;
    let cells = f64::from(left);
    assert_series(
        &scrape,
        "tidewall_rate_limit_available",
        &[("name", QUOTES)],
        cells,
    );
    let replies = quotes_at_once(addr, raised).await;
    assert_eq!(
        replies.len(),
        usize::try_from(raised).unwrap(),
        "no request lost"
    );
    assert_eq!(tally(&replies), (left, raised - left));
    let scrape = app::scrape(addr).await.expect("/metrics");
    let (passed, refused) = (burst + left, sent - burst + raised - left);
    assert_quotes(&scrape, passed, refused, 0);
    let (_, body) = health(addr).await;
    assert_eq!(body["rate_limiters"][QUOTES]["burst"], raised, "{body}");

    // 5. An invalid edit is refused, counted, and changes nothing.
    let invalid = app::with_quote_limit(&served, 0, raised);
    assert!(Config::from_toml(&invalid).is_err(), "count = 0 is invalid");
    app::replace_file(&path, &invalid).expect("the edit");
    let refused_reloads = [("registry", app::REGISTRY), ("outcome", "refused")];
    let scrape = app::wait_for(addr, reloads, &refused_reloads, 1.0, RELOAD_WITHIN)
        .await
        .expect("the invalid edit counted as refused");
    assert_reloads(&scrape, 1, 1);
    assert_no_reload(addr, 1, 1).await;
    let (_, body) = health(addr).await;
    assert_eq!(
        body["rate_limiters"][QUOTES]["burst"], raised,
        "the old limit stays: {body}"
    );
    let replies = quotes_at_once(addr, 1).await;
    assert_eq!(tally(&replies), (0, 1), "still nothing left");
    let scrape = app::scrape(addr).await.expect("/metrics");
    assert_quotes(&scrape, passed, refused + 1, 0);

    server.abort();
}
