//! The middleware built from a configuration file: `Registry::http_client` against a loopback
//! server, and a reload reaching the middleware already built, as the server counts requests.

mod support;

use reqwest_middleware::ClientBuilder;
use support::fault_server::{Fault, FaultServer};
use tidewall::breaker::State;
use tidewall::config::{Config, Registry};
use tidewall::http::Authority;
use tidewall_reqwest::{Resilience, rejection};

const BEFORE: &str = r#"
    [instances.upstream]
    deadline = "30s"
    attempt_timeout = "5s"
    http = { retry_statuses = [521] }
    [instances.upstream.retry]
    backoff = "constant"
    initial_delay = "10ms"
    jitter = "none"
    max_attempts = 3
    [instances.upstream.breaker]
    consecutive_failures = 6
    failure_rate = "off"
    break_duration = "30s"
"#;

#[tokio::test]
async fn a_reload_reaches_the_middleware_already_built() {
    // /cdn answers 521 always, /ok 200.
    let server = FaultServer::start(|_, _, path| match path {
        "/cdn" => Fault::Status {
            code: 521,
            retry_after: None,
        },
        _ => Fault::Ok,
    });
    let registry = Registry::new(Config::from_toml(BEFORE).unwrap()).unwrap();
    let resilience = Resilience::new(registry.http_client("upstream").unwrap());
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(resilience.clone())
        .build();

    // 521 is retried, as `[http]` says: three attempts.
    let answer = client.get(server.url("/cdn")).send().await.unwrap();
    assert_eq!(answer.status(), 521);
    assert_eq!(server.hits_on("/cdn"), 3);

    // Reload: one retry, and a breaker that opens on 4 failures in a row. The host already
    // failed 3 times; its breaker keeps that count.
    let after = BEFORE
        .replace("max_attempts = 3", "max_attempts = 2")
        .replace("consecutive_failures = 6", "consecutive_failures = 4");
    let reload = registry.reload(Config::from_toml(&after).unwrap()).unwrap();
    assert!(reload.reset.is_empty(), "{reload:?}");
    let answer = client.get(server.url("/cdn")).send().await.unwrap();
    assert_eq!(answer.status(), 521);
    assert_eq!(
        server.hits_on("/cdn"),
        4,
        "the fourth failure opened the breaker: no retry"
    );

    let addr = server.addr();
    let host = Authority::new("http", &addr.ip().to_string(), Some(addr.port())).unwrap();
    let breakers = resilience.policies().breakers().unwrap();
    assert_eq!(breakers.state(&host), Some(State::Open));
    let refused = client.get(server.url("/ok")).send().await.unwrap_err();
    assert!(rejection(&refused).is_some(), "{refused:?}");
    assert_eq!(server.hits_on("/ok"), 0);
}
