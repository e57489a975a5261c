//! The middleware against real HTTP servers on loopback, one server per host, with faults:
//! attempts are asserted as each server counted them. Real time, kept short: backoff 10 ms,
//! one test waits out a one-second `Retry-After`.

mod support;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use support::fault_server::{Fault, FaultServer, always, first_n};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::budget::RetryBudgetPolicy;
use tidewall::http::{Authority, ClientPoliciesBuilder};
use tidewall::{Backoff, Jitter, Rejected};
use tidewall_reqwest::{ClientPolicies, Overrides, Resilience, rejection};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn status(code: u16) -> Fault {
    Fault::Status {
        code,
        retry_after: None,
    }
}

/// Three attempts 10 ms apart; a breaker per host opening on 3 failures in a row for 10 s.
/// Attempts time out after 5 s and calls after 30 s: far above any loopback answer even on a
/// loaded machine, since a timed-out attempt would be retried and add a hit to the exact
/// counts below. The tests about timeouts set their own.
fn policies() -> ClientPoliciesBuilder {
    ClientPolicies::builder()
        .retry(
            Backoff::constant(ms(10))
                .jitter(Jitter::None)
                .max_attempts(3)
                .build()
                .unwrap(),
        )
        .attempt_timeout(Some(Duration::from_secs(5)))
        .deadline(Some(Duration::from_secs(30)))
        .retry_budget(None)
        .breaker(Some(
            CircuitBreaker::builder()
                .no_failure_rate()
                .consecutive_failures(3)
                .break_duration(Duration::from_secs(10)),
        ))
}

fn client(policies: ClientPoliciesBuilder) -> (ClientWithMiddleware, Resilience) {
    let resilience = Resilience::new(policies.build().unwrap());
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(resilience.clone())
        .build();
    (client, resilience)
}

fn authority(server: &FaultServer) -> Authority {
    let addr = server.addr();
    Authority::new("http", &addr.ip().to_string(), Some(addr.port())).unwrap()
}

#[tokio::test]
async fn a_503_is_retried_after_its_retry_after() {
    let server = FaultServer::start(first_n(
        1,
        Fault::Status {
            code: 503,
            retry_after: Some(1),
        },
    ));
    let (client, _) = client(policies());
    let start = Instant::now();
    let response = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.hits(), 2);
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "waited the server's second"
    );
}

#[tokio::test]
async fn a_429_whose_wait_passes_the_deadline_is_answered_at_once() {
    let server = FaultServer::start(always(Fault::Status {
        code: 429,
        retry_after: Some(60),
    }));
    let (client, _) = client(policies().deadline(Some(Duration::from_secs(2))));
    let start = Instant::now();
    let response = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(server.hits(), 1);
    assert!(start.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_slow_attempt_times_out_and_the_retry_answers() {
    let server = FaultServer::start(first_n(1, Fault::Slow(Duration::from_secs(3))));
    let (client, _) = client(policies().attempt_timeout(Some(ms(200))));
    let start = Instant::now();
    let response = client.get(server.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.hits(), 2);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "did not wait for the slow one"
    );
}

#[tokio::test]
async fn resets_are_retried_only_for_requests_that_may_be_replayed() {
    let (client, _) = client(policies().breaker(None));
    let server = FaultServer::start(always(Fault::Reset));
    let error = client.get(server.url("/")).send().await.unwrap_err();
    assert!(
        matches!(error, reqwest_middleware::Error::Reqwest(_)),
        "{error:?}"
    );
    assert_eq!(server.hits(), 3, "a GET is retried");

    let server = FaultServer::start(always(Fault::Reset));
    let _ = client.post(server.url("/")).body("order").send().await;
    assert_eq!(server.hits(), 1, "a POST is sent once");

    let server = FaultServer::start(always(Fault::Reset));
    let _ = client
        .post(server.url("/"))
        .header("idempotency-key", "order-7")
        .body("order")
        .send()
        .await;
    assert_eq!(
        server.hits(),
        3,
        "a POST with an Idempotency-Key is retried"
    );
    assert_eq!(server.bodies_on("/").len(), 3);
}

#[tokio::test]
async fn a_404_is_an_answer_neither_retried_nor_held_against_the_host() {
    let server = FaultServer::start(always(status(404)));
    let (client, resilience) = client(policies());
    for _ in 0..50 {
        let response = client.get(server.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 404);
    }
    assert_eq!(server.hits(), 50);
    let breakers = resilience.policies().breakers().unwrap();
    assert_eq!(breakers.state(&authority(&server)), Some(State::Closed));
}

#[tokio::test]
async fn a_failing_host_opens_its_breaker_while_another_keeps_working() {
    let down = FaultServer::start(always(status(503)));
    let up = FaultServer::start(always(Fault::Ok));
    let (client, resilience) = client(policies());
    for _ in 0..20 {
        let answered = client.get(down.url("/")).send().await;
        if let Err(error) = answered {
            assert!(matches!(
                rejection(&error),
                Some(Rejected::CircuitOpen { .. })
            ));
        }
        let response = client.get(up.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    // The first call's three attempts opened the breaker; every later call was refused
    // without reaching the host.
    assert_eq!(down.hits(), 3);
    assert_eq!(up.hits(), 20);
    let breakers = resilience.policies().breakers().unwrap();
    assert_eq!(breakers.state(&authority(&down)), Some(State::Open));
    assert_eq!(breakers.state(&authority(&up)), Some(State::Closed));
}

#[tokio::test]
async fn a_failing_host_cannot_multiply_its_load_past_the_budget() {
    let server = FaultServer::start(always(status(500)));
    let budget = RetryBudgetPolicy::builder()
        .ratio(0.2)
        .min_per_second(0)
        .build()
        .unwrap();
    let (client, _) = client(policies().breaker(None).retry_budget(Some(budget)));
    let calls = 100;
    for _ in 0..calls {
        let response = client.get(server.url("/")).send().await.unwrap();
        assert_eq!(response.status(), 500);
    }
    let hits = server.hits();
    assert!(hits <= calls * 6 / 5, "{hits} attempts for {calls} calls");
    assert!(hits > calls, "some retries were granted: {hits}");
}

#[tokio::test]
async fn a_streaming_body_is_sent_once() {
    let server = FaultServer::start(always(status(503)));
    let (client, _) = client(policies());
    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>("or"), Ok("der")]);
    let response = client
        .put(server.url("/"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503, "the response comes back as it is");
    assert_eq!(server.hits(), 1);
    assert_eq!(server.bodies_on("/"), [bytes::Bytes::from_static(b"order")]);
}

#[tokio::test]
async fn overrides_change_one_request() {
    let server = FaultServer::start(always(status(503)));
    let (client, _) = client(policies().breaker(None));
    let response = client
        .get(server.url("/"))
        .with_extension(Overrides::new().no_retry())
        .send()
        .await
        .unwrap();
    assert_eq!((response.status().as_u16(), server.hits()), (503, 1));
    let _ = client
        .get(server.url("/"))
        .with_extension(Overrides::new().max_attempts(NonZeroU32::new(2).unwrap()))
        .send()
        .await;
    assert_eq!(server.hits(), 3, "two more");

    let slow = FaultServer::start(always(Fault::Slow(Duration::from_secs(3))));
    let start = Instant::now();
    let error = client
        .get(slow.url("/"))
        .with_extension(Overrides::new().deadline(ms(300)))
        .send()
        .await
        .unwrap_err();
    assert_eq!(rejection(&error), Some(Rejected::DeadlineExceeded));
    let took = start.elapsed();
    assert!(took >= ms(300) && took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn a_full_authority_table_refuses_a_new_host_before_sending() {
    let hosts: Vec<_> = (0..3)
        .map(|_| FaultServer::start(always(status(503))))
        .collect();
    let (client, _) = client(policies().max_authorities(2));
    for host in &hosts[..2] {
        let _ = client.get(host.url("/")).send().await;
    }
    let error = client.get(hosts[2].url("/")).send().await.unwrap_err();
    assert!(
        matches!(rejection(&error), Some(Rejected::KeysFull { .. })),
        "{error:?}"
    );
    assert_eq!(hosts[2].hits(), 0);
}

#[tokio::test]
async fn the_classifier_gives_other_fronts_the_standard_table_over_reqwest_types() {
    use tidewall::RetryExt;
    use tidewall::classify::{Classify, Verdict};
    use tidewall_reqwest::ReqwestClassifier;

    let server = FaultServer::start(first_n(
        1,
        Fault::Status {
            code: 503,
            retry_after: Some(1),
        },
    ));
    let client = reqwest::Client::new();
    let backoff = Backoff::constant(ms(10)).max_attempts(3).build().unwrap();
    let start = Instant::now();
    let response = (|| client.get(server.url("/")).send())
        .retry(backoff)
        .classify(ReqwestClassifier::standard())
        .await
        .unwrap();
    assert_eq!((response.status().as_u16(), server.hits()), (200, 2));
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "the 503's Retry-After held"
    );

    let reset = FaultServer::start(always(Fault::Reset));
    let error = client.get(reset.url("/")).send().await.unwrap_err();
    let verdict = Classify::<reqwest::Response, reqwest::Error>::classify(
        &ReqwestClassifier::standard(),
        Err(&error),
    );
    assert_eq!(
        verdict,
        Verdict::RetryableFailure,
        "a reset is retryable: {error:?}"
    );
    let refused = {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", closed.local_addr().unwrap());
        drop(closed);
        client.get(url).send().await.unwrap_err()
    };
    let verdict = Classify::<reqwest::Response, reqwest::Error>::classify(
        &ReqwestClassifier::standard(),
        Err(&refused),
    );
    assert_eq!(
        verdict,
        Verdict::RetryableFailure,
        "a refused connection: {refused:?}"
    );
}
