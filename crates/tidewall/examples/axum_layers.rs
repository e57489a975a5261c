//! An axum app served behind Tidewall's tower layers, then called to show each one act.
//!
//! ```text
//! cargo run -p tidewall --example axum_layers --features tower
//! ```
//!
//! Layers, outermost first: error mapping (rejections → HTTP status with `Retry-After`),
//! a timeout covering readiness and the handler, a shared rate limiter that rejects with 429,
//! a bulkhead that sheds with 503, and a circuit breaker that counts 5xx responses as failures.
//! The whole stack has one error type, axum's `BoxError`: the routes' errors are boxed once,
//! beneath the layers, and each layer boxes its own refusal or timeout into the same type.
#![allow(clippy::print_stdout)]

use std::time::Duration;

use axum::BoxError;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tidewall::breaker::CircuitBreaker;
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::Verdict;
use tidewall::rate::RateLimiter;
use tidewall::time::Elapsed;
use tidewall::tower::{AdmitLayer, AdmitMode, BreakerLayer, TimeoutLayer, cause};
use tidewall::{Rejected, RetryAfter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceBuilder;

/// Maps a layer's error to a response: the status says which policy refused, and
/// `Retry-After` carries the policy's hint.
async fn refusal(err: BoxError) -> Response {
    let (status, hint) = if let Some(rejected) = cause::<Rejected>(&*err) {
        let status = match rejected {
            Rejected::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, rejected.retry_after())
    } else if cause::<Elapsed>(&*err).is_some() {
        (StatusCode::GATEWAY_TIMEOUT, None)
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, None)
    };
    let mut response = (status, err.to_string()).into_response();
    if let Some(hint) = hint {
        let seconds = hint.as_secs() + u64::from(hint.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

fn app() -> Result<Router, tidewall::ConfigError> {
    let limiter = RateLimiter::builder(20, Duration::from_secs(1))
        .burst(5)
        .build()?;
    let bulkhead = Bulkhead::builder(4).reject_when_full().build()?;
    let breaker = CircuitBreaker::builder()
        .name("handlers")
        .consecutive_failures(3)
        .break_duration(Duration::from_secs(30))
        .build()?;
    let server_errors_fail = |result: Result<&Response, &_>| match result {
        Ok(response) if response.status().is_server_error() => Verdict::Failure,
        Ok(_) => Verdict::Success,
        Err(_) => Verdict::Failure,
    };
    let policies = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(refusal))
        .layer(TimeoutLayer::new(Duration::from_millis(300)))
        .layer(AdmitLayer::new(limiter, AdmitMode::Reject))
        .layer(AdmitLayer::new(bulkhead, AdmitMode::Reject))
        .layer(BreakerLayer::new(breaker).classify(server_errors_fail))
        .map_err(BoxError::from);
    Ok(Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "finally"
            }),
        )
        .route(
            "/broken",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "broken") }),
        )
        .layer(policies))
}

/// One HTTP/1.1 request on a fresh connection; returns the status line and `Retry-After`.
async fn get_status(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let status = raw
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("HTTP/1.1 ")
        .to_owned();
    let retry_after = raw
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .map(|s| format!(" (Retry-After: {s})"))
        .unwrap_or_default();
    Ok(format!("{status}{retry_after}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app().expect("valid policies")).await });

    let mut seen = Vec::new();
    let mut get = async |path: &str| -> std::io::Result<()> {
        let status = get_status(addr, path).await?;
        println!("GET {path:<8} -> {status}");
        seen.push(status[..3].to_owned());
        Ok(())
    };
    // A burst of 5, then 429 with Retry-After.
    for _ in 0..7 {
        get("/ok").await?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // let the limiter refill
    // The timeout cuts a 2 s handler at 300 ms.
    get("/slow").await?;
    // Three 500s trip the breaker (5xx counts as failure); the fourth call is shed with 503.
    for _ in 0..4 {
        get("/broken").await?;
    }
    let expected = [
        "200", "200", "200", "200", "200", "429", "429", "504", "500", "500", "500", "503",
    ];
    if seen != expected {
        return Err(format!("expected {expected:?}, got {seen:?}").into());
    }
    println!("every layer answered as expected");
    Ok(())
}
