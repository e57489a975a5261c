//! The HTTP presets through the fronts: the standard classifier retries a 503 after its
//! `Retry-After` (an `Ok` response, not an error), holds the breaker open for it, and neither
//! retries nor counts a 404 — through the retry future, the pipeline and the tower layers.

mod common;

use common::ms;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use http::{Response, StatusCode};
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::http::HttpClassifier;
use tidewall::pipeline::Pipeline;
use tidewall::rt::{Clock, Runtime};
use tidewall::testing::Clocked;
use tidewall::tower::{BreakerLayer, RetryLayer};
use tidewall::{Backoff, Error, Jitter, RetryExt};
use tower::ServiceExt as _;
use tower_layer::Layer;

/// A server answering `statuses` in order (the last repeats); a 503 says `Retry-After: 2`.
#[derive(Clone)]
struct Server {
    statuses: Arc<Vec<u16>>,
    calls: Arc<AtomicUsize>,
}

impl Server {
    fn new(statuses: &[u16]) -> Self {
        Self {
            statuses: Arc::new(statuses.to_vec()),
            calls: Arc::default(),
        }
    }

    fn answer(&self) -> Response<()> {
        let n = self.calls.fetch_add(1, SeqCst);
        let status = self.statuses[n.min(self.statuses.len() - 1)];
        let mut response = Response::builder().status(status);
        if status == 503 {
            response = response.header("retry-after", "2");
        }
        response.body(()).unwrap()
    }

    /// One request to the server, as an operation's attempt.
    fn request(&self) -> impl Future<Output = Result<Response<()>, std::io::Error>> + use<> {
        let answer = self.answer();
        async move { Ok(answer) }
    }

    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }
}

fn backoff() -> Backoff {
    Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(3)
        .build()
        .unwrap()
}

fn breaker<R: Runtime>(rt: &Clocked<R>) -> CircuitBreaker<Clocked<R>> {
    CircuitBreaker::builder()
        .runtime(rt.clone())
        .consecutive_failures(1)
        .break_duration(ms(100))
        .build()
        .unwrap()
}

async fn a_503_waits_its_retry_after<R: Runtime>(rt: Clocked<R>) {
    // The retry future.
    let server = Server::new(&[503, 200]);
    let start = rt.now();
    let answered = (|| server.request())
        .retry_on(&rt, backoff())
        .classify(HttpClassifier::standard())
        .await
        .unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    assert_eq!(
        (server.calls(), rt.now() - start),
        (2, Duration::from_secs(2))
    );

    // The pipeline, with a breaker: the 503 opens it for the hint, the retry is its probe.
    let server = Server::new(&[503, 200]);
    let tripping = breaker(&rt);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(backoff())
        .breaker(tripping.clone())
        .classify(HttpClassifier::standard())
        .build()
        .unwrap();
    let start = rt.now();
    let answered = pipeline.call(|| server.request()).await.unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    assert_eq!(
        (server.calls(), rt.now() - start),
        (2, Duration::from_secs(2))
    );
    assert_eq!(tripping.state(), State::Closed, "the probe succeeded");

    // Tower: retry over a breaker over the server, the errors typed.
    let server = Server::new(&[503, 200]);
    let tripping = breaker(&rt);
    let inner = {
        let server = server.clone();
        tower::service_fn(move |()| {
            let server = server.clone();
            async move { Ok::<_, Error<std::io::Error>>(server.answer()) }
        })
    };
    let service = RetryLayer::new(backoff())
        .runtime(rt.clone())
        .classify(HttpClassifier::standard())
        .layer(
            BreakerLayer::new(tripping.clone())
                .classify(HttpClassifier::standard())
                .layer(inner),
        );
    let start = rt.now();
    let answered = service.oneshot(()).await.unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    assert_eq!(
        (server.calls(), rt.now() - start),
        (2, Duration::from_secs(2))
    );
    assert_eq!(tripping.state(), State::Closed);
}

#[test]
fn a_503_is_retried_after_its_retry_after_through_every_front_on_every_runtime() {
    on_every_runtime!(a_503_waits_its_retry_after);
}

async fn a_404_is_an_answer<R: Runtime>(rt: Clocked<R>) {
    let server = Server::new(&[404]);
    let tripping = breaker(&rt);
    let pipeline = Pipeline::builder()
        .runtime(rt.clone())
        .retry(backoff())
        .breaker(tripping.clone())
        .classify(HttpClassifier::standard())
        .build()
        .unwrap();
    for _ in 0..5 {
        let answered = pipeline.call(|| server.request()).await.unwrap();
        assert_eq!(answered.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(server.calls(), 5, "never retried");
    assert_eq!(
        tripping.state(),
        State::Closed,
        "never counted against the server"
    );

    // A 501 is a failure not retried: one call, and the breaker opens.
    let server = Server::new(&[501]);
    let answered = pipeline.call(|| server.request()).await.unwrap();
    assert_eq!(answered.status(), StatusCode::NOT_IMPLEMENTED);
    assert_eq!(server.calls(), 1);
    assert_eq!(tripping.state(), State::Open);
}

#[test]
fn a_404_is_neither_retried_nor_counted_and_a_501_is_not_retried_on_every_runtime() {
    on_every_runtime!(a_404_is_an_answer);
}

async fn a_refused_connection_is_retried<R: Runtime>(rt: Clocked<R>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let start = rt.now();
    let answered = (move || {
        let n = counted.fetch_add(1, SeqCst);
        async move {
            if n == 0 {
                Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
            } else {
                Ok(Response::builder().status(200).body(()).unwrap())
            }
        }
    })
    .retry_on(&rt, backoff())
    .classify(HttpClassifier::standard())
    .await
    .unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    assert_eq!((calls.load(SeqCst), rt.now() - start), (2, ms(10)));
}

#[test]
fn a_refused_connection_is_retried_on_the_schedule_on_every_runtime() {
    on_every_runtime!(a_refused_connection_is_retried);
}
