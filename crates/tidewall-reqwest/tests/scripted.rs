//! `testing::Scripted`: a client under test answered from a script, on tokio's paused clock:
//! retries, `Retry-After`, breakers, attempt timeouts and connection errors behave as over
//! the network, and no socket is opened.
#![cfg(feature = "test-util")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::http::ClientPolicies;
use tidewall::{Backoff, Jitter};
use tidewall_reqwest::testing::{Answer, Scripted};
use tidewall_reqwest::{Resilience, authority, rejection, timed_out};
use tokio::time::Instant;

fn status(code: u16) -> Answer {
    Ok(http::Response::builder()
        .status(code)
        .body(Vec::new())
        .unwrap())
}

/// Three attempts 100 ms apart, a 1 s attempt timeout, a breaker per host opening on 3
/// failures in a row.
fn policies() -> ClientPolicies {
    ClientPolicies::builder()
        .retry(
            Backoff::constant(Duration::from_millis(100))
                .jitter(Jitter::None)
                .max_attempts(3)
                .build()
                .unwrap(),
        )
        .attempt_timeout(Some(Duration::from_secs(1)))
        .breaker(Some(
            CircuitBreaker::builder()
                .consecutive_failures(3)
                .break_duration(Duration::from_secs(30)),
        ))
        .build()
        .unwrap()
}

fn scripted_client(resilience: &Resilience, server: &Scripted) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(resilience.clone())
        .with(server.clone())
        .build()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_down_host_is_retried_then_shed_by_its_breaker() {
    let server = Scripted::new(|request| {
        let down = request.url().host_str() == Some("down.test");
        async move { status(if down { 503 } else { 200 }) }
    });
    let resilience = Resilience::new(policies());
    let client = scripted_client(&resilience, &server);
    let start = Instant::now();
    let answer = client.get("http://down.test/").send().await.unwrap();
    assert_eq!(answer.status(), 503, "the last attempt's answer");
    assert_eq!(server.attempts(), 3);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(200),
        "two backoffs, virtual"
    );
    let host = authority(&reqwest::Url::parse("http://down.test/").unwrap()).unwrap();
    let breakers = resilience.policies().breakers().unwrap();
    assert_eq!(breakers.state(&host), Some(State::Open));
    // Shed at once now, without an attempt; the other host still answers.
    let shed = client.get("http://down.test/").send().await.unwrap_err();
    assert!(rejection(&shed).is_some(), "{shed:?}");
    assert_eq!(server.attempts(), 3);
    let up = client.get("http://up.test/").send().await.unwrap();
    assert_eq!((up.status().as_u16(), server.attempts()), (200, 4));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_slow_answer_is_cut_by_the_attempt_timeout() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let server = Scripted::new(move |_request| {
        let n = seen.fetch_add(1, SeqCst);
        async move {
            if n == 0 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            status(200)
        }
    });
    let client = scripted_client(&Resilience::new(policies()), &server);
    let start = Instant::now();
    let answer = client.get("http://slow.test/").send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(server.attempts(), 2);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(1_100),
        "one attempt timeout and one backoff"
    );
    // Every attempt slow: the last one's timeout is the error.
    let server = Scripted::new(|_request| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        status(200)
    });
    let all_slow = scripted_client(&Resilience::new(policies()), &server);
    let error = all_slow.get("http://slow.test/").send().await.unwrap_err();
    assert!(timed_out(&error), "{error:?}");
    assert_eq!(server.attempts(), 3);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_refused_connection_is_retried_and_held_against_the_host() {
    let server = Scripted::new(|_request| async {
        Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    });
    let resilience = Resilience::new(policies());
    let client = scripted_client(&resilience, &server);
    let error = client.get("http://gone.test/").send().await.unwrap_err();
    assert!(
        rejection(&error).is_none() && !timed_out(&error),
        "{error:?}"
    );
    assert_eq!(server.attempts(), 3, "retried as a connection failure");
    let host = authority(&reqwest::Url::parse("http://gone.test/").unwrap()).unwrap();
    let breakers = resilience.policies().breakers().unwrap();
    assert_eq!(breakers.state(&host), Some(State::Open));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_post_is_sent_once_and_the_script_sees_the_request() {
    let server = Scripted::new(|request| {
        let method = request.method().clone();
        let body = request
            .body()
            .and_then(reqwest::Body::as_bytes)
            .map(<[u8]>::to_vec);
        async move {
            assert_eq!(method, http::Method::POST);
            assert_eq!(body.as_deref(), Some(&b"order"[..]));
            status(503)
        }
    });
    let client = scripted_client(&Resilience::new(policies()), &server);
    let answer = client
        .post("http://orders.test/")
        .body("order")
        .send()
        .await
        .unwrap();
    assert_eq!((answer.status().as_u16(), server.attempts()), (503, 1));
}
