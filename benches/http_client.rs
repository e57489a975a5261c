//! The HTTP client stack's cost per request on success, against the same client without it and
//! against reqwest-retry, on loopback, in the same run.
//!
//! Every row sends one GET to a hyper HTTP/1.1 server answering `200 ok` and reads the body,
//! over a pooled keep-alive connection. The server runs on the same current-thread tokio
//! runtime as the client: on a 2-vCPU VM a wake-up across threads costs 20–50 µs and would
//! drown a difference of a few microseconds.
//!
//! * `http_success`: plain `reqwest`; `reqwest-middleware` with no middleware; with
//!   reqwest-retry's `RetryTransientMiddleware` (2 retries, exponential); with Tidewall's
//!   `Resilience::standard()`. The last two are not the same work: reqwest-retry copies the
//!   request and classifies the response; Tidewall also takes the host's breaker permit, bulkhead
//!   slot and retry budget, runs the attempt under a timeout and records the outcome.
//! * `hyper_util_success`: hyper-util's legacy client, alone and under Tidewall's `ClientLayer`
//!   (the same loop as the middleware, its future boxed).
//!
//! Run: `cargo bench -p tidewall-benches --bench http_client`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use tidewall::http::{ClientPolicies, FailureKind, HttpFailure};
use tidewall::tower::http::ClientLayer;
use tidewall_reqwest::Resilience;
use tokio::runtime::Runtime;
use tower::{Layer, ServiceExt as _};

/// Serves `200 ok` on loopback from the current runtime, one task per connection.
async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

async fn get(client: &ClientWithMiddleware, url: &str) -> Bytes {
    let response = client.get(url).send().await.expect("answered");
    assert!(response.status().is_success());
    response.bytes().await.expect("a body")
}

fn http_success(c: &mut criterion::Criterion) {
    let rt = runtime();
    let addr = rt.block_on(serve());
    let url = format!("http://{addr}/");
    let reqwest = reqwest::Client::new();
    let bare = ClientBuilder::new(reqwest.clone()).build();
    let retrying = ClientBuilder::new(reqwest.clone())
        .with(RetryTransientMiddleware::new_with_policy(
            ExponentialBackoff::builder().build_with_max_retries(2),
        ))
        .build();
    let tidewall = ClientBuilder::new(reqwest.clone())
        .with(Resilience::standard())
        .build();
    let mut group = c.benchmark_group("http_success");
    group.bench_function("reqwest", |b| {
        b.to_async(&rt).iter(|| async {
            let response = reqwest.get(&url).send().await.expect("answered");
            assert!(response.status().is_success());
            response.bytes().await.expect("a body")
        });
    });
    group.bench_function("reqwest_middleware_empty", |b| {
        b.to_async(&rt).iter(|| get(&bare, &url));
    });
    group.bench_function("reqwest_retry", |b| {
        b.to_async(&rt).iter(|| get(&retrying, &url));
    });
    group.bench_function("tidewall_reqwest", |b| {
        b.to_async(&rt).iter(|| get(&tidewall, &url));
    });
    group.finish();
}

/// hyper-util's error, as the standard table reads it.
#[derive(Debug)]
struct HyperError(hyper_util::client::legacy::Error);

impl HttpFailure for HyperError {
    fn failure_kind(&self) -> FailureKind {
        if self.0.is_connect() {
            FailureKind::Connect
        } else {
            FailureKind::Other
        }
    }
}

fn hyper_util_success(c: &mut criterion::Criterion) {
    let rt = runtime();
    let addr = rt.block_on(serve());
    let uri: http::Uri = format!("http://{addr}/").parse().expect("a URI");
    let client: HyperClient<HttpConnector, Empty<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build_http();
    let layered = {
        let _entered = rt.enter();
        ClientLayer::new(ClientPolicies::standard()).layer(client.clone().map_err(HyperError))
    };
    let request = || {
        http::Request::get(uri.clone())
            .body(Empty::<Bytes>::new())
            .expect("a request")
    };
    let mut group = c.benchmark_group("hyper_util_success");
    group.bench_function("hyper_util", |b| {
        b.to_async(&rt).iter(|| async {
            let response = client.request(request()).await.expect("answered");
            assert!(response.status().is_success());
            response.into_body().collect().await.expect("a body")
        });
    });
    group.bench_function("tidewall_client_layer", |b| {
        b.to_async(&rt).iter(|| async {
            let response = layered.clone().oneshot(request()).await.expect("answered");
            assert!(response.status().is_success());
            response.into_body().collect().await.expect("a body")
        });
    });
    group.finish();
}

// criterion_group! generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group! {
        name = benches;
        config = tidewall_benches::criterion();
        targets = http_success, hyper_util_success
    }
}
criterion_main!(group::benches);
