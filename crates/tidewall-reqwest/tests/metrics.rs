//! What a dashboard scrapes from a reqwest client (feature `metrics`): the middleware's
//! requests, retries and host breakers, rendered by metrics-exporter-prometheus as Prometheus
//! text, against requests a loopback server counted.
#![cfg(feature = "metrics")]

mod support;

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use reqwest_middleware::ClientBuilder;
use support::fault_server::{Fault, FaultServer};
use tidewall::breaker::CircuitBreaker;
use tidewall::{Backoff, Jitter};
use tidewall_reqwest::{ClientPolicies, Resilience};

/// The value of the one line of `text` that starts with `series` (a name with its labels).
fn value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn a_scrape_counts_requests_retries_and_open_hosts() {
    // /flaky: a 503, then 200s; /down: 503s always.
    let server = FaultServer::start(|n, _, path| match (path, n) {
        ("/down", _) | ("/flaky", 0) => Fault::Status {
            code: 503,
            retry_after: None,
        },
        _ => Fault::Ok,
    });
    let recorder = PrometheusBuilder::new().build_recorder();
    let scrape = recorder.handle();
    // The recorder first: the stack registers its counters when it is built.
    let resilience = metrics::with_local_recorder(&recorder, || {
        ClientPolicies::builder()
            .name("loopback")
            .retry(
                Backoff::constant(Duration::from_millis(10))
                    .jitter(Jitter::None)
                    .max_attempts(3)
                    .build()
                    .unwrap(),
            )
            .retry_budget(None)
            .breaker(Some(
                CircuitBreaker::builder()
                    .no_failure_rate()
                    .consecutive_failures(3),
            ))
            .build()
            .map(Resilience::new)
    })
    .unwrap();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(resilience.clone())
        .build();

    let flaky = client.get(server.url("/flaky")).send().await.unwrap();
    assert_eq!(flaky.status(), 200);
    let down = client.get(server.url("/down")).send().await.unwrap();
    assert_eq!(down.status(), 503);
    // Both paths are one host: its breaker opened on /down's third 503.
    let refused = client.get(server.url("/flaky")).send().await;
    assert!(tidewall_reqwest::rejection(&refused.unwrap_err()).is_some());
    assert_eq!(server.hits(), 5);

    metrics::with_local_recorder(&recorder, || resilience.policies().record_gauges());
    let text = scrape.render();
    let client_series = |outcome: &str| {
        let series = format!(
            "tidewall_calls_total{{policy=\"http_client\",name=\"loopback\",outcome=\"{outcome}\"}}"
        );
        value(&text, &series)
    };
    assert_eq!(client_series("success"), Some(1), "{text}");
    assert_eq!(client_series("failure"), Some(1), "{text}");
    assert_eq!(client_series("rejected"), Some(1), "{text}");
    assert_eq!(
        value(
            &text,
            "tidewall_retries_total{policy=\"http_client\",name=\"loopback\"}"
        ),
        Some(3),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "tidewall_keyed_breaker_keys{name=\"loopback\",state=\"open\"}"
        ),
        Some(1),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "tidewall_call_duration_seconds_count{policy=\"http_client\",name=\"loopback\"}"
        ),
        Some(3),
        "{text}"
    );
}
