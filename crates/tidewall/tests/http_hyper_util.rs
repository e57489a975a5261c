//! `ClientLayer` over hyper-util's client on loopback, with the `hyper` feature: a server that
//! closes each connection once it has read the request (hyper's "incomplete message", the
//! keep-alive race a pooled client meets) is an interrupted attempt, retried as the standard
//! table says, as through the tidewall-reqwest middleware.
#![cfg(all(feature = "hyper", feature = "tower", feature = "tokio"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tidewall::http::{ClientPolicies, FailureKind, HttpFailure};
use tidewall::tower::http::ClientLayer;
use tidewall::{Backoff, Error, Jitter};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tower::{Layer, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Accepts connections on loopback; on each, reads up to the end of the request head, then
/// closes the connection without answering. Counts the connections.
async fn closing_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                drop(stream);
            });
        }
    });
    (address, accepted)
}

#[tokio::test]
async fn a_connection_closed_before_the_response_is_retried() {
    let (address, accepted) = closing_server().await;
    let policies = ClientPolicies::builder()
        .retry(
            Backoff::constant(Duration::from_millis(1))
                .jitter(Jitter::None)
                .max_attempts(3)
                .build()
                .unwrap(),
        )
        .breaker(None)
        .retry_budget(None)
        .build()
        .unwrap();
    let hyper = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let client = ClientLayer::new(policies).layer(hyper.map_err(BoxError::from));
    let request = http::Request::get(format!("http://{address}/"))
        .body(Empty::new())
        .unwrap();
    let answer = client.oneshot(request).await;
    let Err(Error::Inner(error)) = answer else {
        panic!("the server never answers: {answer:?}");
    };
    assert_eq!(error.failure_kind(), FailureKind::Interrupted, "{error:?}");
    assert_eq!(
        accepted.load(SeqCst),
        3,
        "three attempts, each on its own connection"
    );
}
