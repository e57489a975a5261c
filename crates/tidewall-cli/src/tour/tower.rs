//! The tour's tower section: the HTTP client behind tower layers, as a service team stacks
//! them: a breaker that judges responses with a classifier, a bulkhead that sheds, and a
//! configured instance's whole pipeline as one layer, retuned by a reload.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use http::StatusCode;
use tidewall::breaker::{CircuitBreaker, State};
use tidewall::bulkhead::Bulkhead;
use tidewall::classify::Verdict;
use tidewall::config::{Config, Registry};
use tidewall::http::HttpClassifier;
use tidewall::tower::NoClone;
use tidewall::tower::{AdmitLayer, AdmitMode, BreakerLayer, PipelineLayer};
use tidewall::{Error, Rejected};
use tower_layer::Layer;
use tower_service::Service;

use super::client::{Client, HttpError, Net, since};
use super::report::{Section, ms};
use super::resilience::valid;
use super::scenarios::{Size, settle, unique};
use super::server::Server;

pub(crate) async fn all<R: Net>(rt: R, server: &Server, size: Size) -> Vec<Section> {
    let get = Get(Arc::new(Client::new(rt.clone(), server.addr)));
    vec![
        classified(&get, &rt, server, size).await,
        shedding(&get, &rt, server).await,
        configured_pipeline(&get, &rt, server).await,
    ]
}

/// GET as a tower service: the request is the path. Its errors are already Tidewall's
/// `Error<HttpError>` (the client's own error is `Error::Inner`), so the layers above it add
/// their refusals to the same type: one error type however many layers are stacked.
struct Get<R>(Arc<Client<R>>);

impl<R> Clone for Get<R> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<R: Net> Service<String> for Get<R> {
    type Response = Bytes;
    type Error = Error<HttpError>;
    type Future = Pin<Box<dyn Future<Output = Result<Bytes, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, path: String) -> Self::Future {
        let client = Arc::clone(&self.0);
        Box::pin(async move { client.get(&path).await.map_err(Error::Inner) })
    }
}

/// Calls `service` once, as tower's callers do: ready, then call.
async fn call_once<S: Service<Req>, Req>(
    service: &mut S,
    request: Req,
) -> Result<S::Response, S::Error> {
    poll_fn(|cx| service.poll_ready(cx)).await?;
    service.call(request).await
}

/// The standard HTTP table (`tidewall::http::HttpClassifier`) judges the status this client
/// reports as an error: a 4xx other than 408 and 429 says the service is up and the request
/// was wrong, not a failure of the service. The breaker judges the stack's one error type,
/// `Error<HttpError>`: the client's own errors are `Error::Inner`.
fn http_outcome(result: Result<&Bytes, &Error<HttpError>>) -> Verdict {
    match result {
        Ok(_) => Verdict::Success,
        Err(Error::Inner(HttpError::Status { code, .. })) => StatusCode::from_u16(*code)
            .map_or(Verdict::Failure, |status| {
                HttpClassifier::standard().status_verdict(status)
            }),
        Err(_) => Verdict::Failure,
    }
}

async fn classified<R: Net>(get: &Get<R>, rt: &R, server: &Server, size: Size) -> Section {
    const TRIP_AFTER: u32 = 5;
    let calls = if size == Size::Quick { 12 } else { 20 };
    let mut s = Section::new(
        "tower: a breaker that judges responses, not just Ok and Err",
        "BreakerLayer::new(breaker).classify(|r| ..).layer(client)",
    );
    settle(rt, server).await;
    let breaker = |name| {
        valid(
            CircuitBreaker::builder()
                .runtime(rt.clone())
                .name(name)
                .consecutive_failures(TRIP_AFTER)
                .break_duration(Duration::from_secs(30))
                .build(),
        )
    };
    let (judged, naive) = (
        breaker("tour-tower-classified"),
        breaker("tour-tower-naive"),
    );
    let mut with_classifier = BreakerLayer::new(judged.clone())
        .classify(http_outcome)
        .layer(get.clone());
    let mut without = BreakerLayer::new(naive.clone()).layer(get.clone());
    let before = server.stats.requests();
    let (mut not_found, mut naive_shed) = (0usize, 0usize);
    for _ in 0..calls {
        if let Err(Error::Inner(HttpError::Status { code: 404, .. })) =
            call_once(&mut with_classifier, "/missing".to_owned()).await
        {
            not_found += 1;
        }
        if let Err(Error::Rejected(Rejected::CircuitOpen { .. })) =
            call_once(&mut without, "/missing".to_owned()).await
        {
            naive_shed += 1;
        }
    }
    let reached = server.stats.requests() - before;
    s.metric("calls to a missing page, through each stack", calls)
        .metric("404s returned to the caller (classified stack)", not_found)
        .metric("classified breaker", judged.state())
        .metric("breaker counting every Err", naive.state())
        .metric("calls it shed (the service was up)", naive_shed)
        .metric("requests at the server", reached);
    s.check(
        "every 404 reached the caller and the classified breaker stayed closed",
        not_found == calls && judged.state() == State::Closed,
    );
    s.check(
        "counting every Err, 5 404s opened the breaker on a healthy service",
        naive.state() == State::Open && naive_shed == calls - TRIP_AFTER as usize,
    );
    s
}

async fn shedding<R: Net>(get: &Get<R>, rt: &R, server: &Server) -> Section {
    const SLOTS: usize = 2;
    const CALLS: usize = 6;
    let mut s = Section::new(
        "tower: a full bulkhead sheds at once",
        "AdmitLayer::new(bulkhead, AdmitMode::Reject).layer(client)",
    );
    settle(rt, server).await;
    let bulkhead = valid(
        Bulkhead::builder(SLOTS)
            .runtime(rt.clone())
            .name("tour-tower")
            .build(),
    );
    let service = AdmitLayer::new(bulkhead.clone(), AdmitMode::Reject).layer(get.clone());
    let before = server.stats.requests();
    let outcomes = join_all((0..CALLS).map(|_| {
        let mut service = service.clone();
        async move {
            let start = rt.now();
            let result = call_once(&mut service, "/delay/150".to_owned()).await;
            (result, since(rt, start))
        }
    }))
    .await;
    let reached = server.stats.requests() - before;
    let shed: Vec<Duration> = outcomes
        .iter()
        .filter(|(r, _)| matches!(r, Err(Error::Rejected(Rejected::BulkheadFull))))
        .map(|(_, took)| *took)
        .collect();
    let served: Vec<Duration> = outcomes
        .iter()
        .filter(|(r, _)| r.is_ok())
        .map(|(_, took)| *took)
        .collect();
    let slowest_shed = shed.iter().max().copied().unwrap_or_default();
    let fastest_served = served.iter().min().copied().unwrap_or_default();
    s.metric("concurrent calls, 150 ms each", CALLS)
        .metric("slots", SLOTS)
        .metric("served", served.len())
        .metric("shed with BulkheadFull", shed.len())
        .metric("slowest shed call returned after", ms(slowest_shed))
        .metric("fastest served call took", ms(fastest_served))
        .metric("requests at the server", reached)
        .metric("slots free afterwards", bulkhead.available());
    s.check(
        "2 calls were served and 4 shed, and only the served ones reached the server",
        served.len() == SLOTS && shed.len() == CALLS - SLOTS && reached == SLOTS,
    );
    s.check(
        "every shed call returned before any served call finished",
        !shed.is_empty() && slowest_shed < fastest_served,
    );
    s.check("every slot was free again", bulkhead.available() == SLOTS);
    s
}

/// The instance behind the pipeline layer: three attempts 20 ms apart, or `attempts`.
fn pipeline_config(attempts: u32) -> Config {
    let text = format!(
        "[instances.tour-tower-pipeline]\n\
         deadline = \"5s\"\n\
         [instances.tour-tower-pipeline.retry]\n\
         backoff = \"constant\"\n\
         initial_delay = \"20ms\"\n\
         jitter = \"none\"\n\
         max_attempts = {attempts}\n"
    );
    Config::from_toml(&text).expect("a valid configuration")
}

/// A configured instance's pipeline as one tower layer: a path that fails twice is retried
/// to its answer; after a reload to one attempt, the same layer's services send one request
/// and return the failure.
async fn configured_pipeline<R: Net>(get: &Get<R>, rt: &R, server: &Server) -> Section {
    let mut s = Section::new(
        "tower: a configured pipeline as one layer, retuned by a reload",
        "PipelineLayer::new(registry.pipeline(name)?).layer(client); Registry::reload; \
         clone_requests(NoClone)",
    );
    settle(rt, server).await;
    let registry = Registry::builder(pipeline_config(3))
        .runtime(rt.clone())
        .build()
        .expect("a valid registry");
    let layer = PipelineLayer::new(
        registry
            .pipeline("tour-tower-pipeline")
            .expect("a declared pipeline"),
    );
    // A path whose first two requests get a 503: its answer, and the requests it took.
    let call = || async {
        let path = format!("/flaky/{}/2/-", unique("tour-tower-pipeline"));
        let before = server.stats.requests();
        let mut service = layer.layer(get.clone());
        let answer = call_once(&mut service, path).await;
        (answer, server.stats.requests() - before)
    };
    let (retried, retried_requests) = call().await;
    let reload = registry.reload(pipeline_config(1));
    let (single, single_requests) = call().await;
    let status = |answer: &Result<Bytes, Error<HttpError>>| match answer {
        Ok(_) => "200".to_owned(),
        Err(Error::Inner(HttpError::Status { code, .. })) => code.to_string(),
        Err(other) => other.to_string(),
    };
    s.metric("path", "503, 503, then 200")
        .metric("max_attempts before / after the reload", "3 / 1")
        .metric(
            "answer before / after",
            format!("{} / {}", status(&retried), status(&single)),
        )
        .metric(
            "requests at the server before / after",
            format!("{retried_requests} / {single_requests}"),
        );
    s.check(
        "the layer retried the two 503s to the 200, three requests",
        retried.is_ok() && retried_requests == 3,
    );
    s.check(
        "the reload reached the layer: one request, and its 503 returned",
        reload.is_ok()
            && matches!(
                single,
                Err(Error::Inner(HttpError::Status { code: 503, .. }))
            )
            && single_requests == 1,
    );
    // Retries back on; a request that cannot be copied (as a streaming body cannot) still
    // goes through the same pipeline, once.
    let retuned = registry.reload(pipeline_config(3));
    let once = PipelineLayer::new(
        registry
            .pipeline("tour-tower-pipeline")
            .expect("a declared pipeline"),
    )
    .clone_requests(NoClone);
    let path = format!("/flaky/{}/2/-", unique("tour-tower-pipeline"));
    let before = server.stats.requests();
    let mut service = once.layer(get.clone());
    let sent_once = call_once(&mut service, OneShot(path)).await;
    let once_requests = server.stats.requests() - before;
    s.metric(
        "a one-shot request (not Clone), max_attempts 3: answer, requests",
        format!("{}, {once_requests}", status(&sent_once)),
    );
    s.check(
        "a request that cannot be copied was sent once under a retrying pipeline (NoClone)",
        retuned.is_ok()
            && matches!(
                sent_once,
                Err(Error::Inner(HttpError::Status { code: 503, .. }))
            )
            && once_requests == 1,
    );
    s
}

/// A request that can be sent once, as one with a streaming body: not `Clone`.
struct OneShot(String);

/// GET of a one-shot request's path.
impl<R: Net> Service<OneShot> for Get<R> {
    type Response = Bytes;
    type Error = Error<HttpError>;
    type Future = <Self as Service<String>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<String>::poll_ready(self, cx)
    }

    fn call(&mut self, request: OneShot) -> Self::Future {
        self.call(request.0)
    }
}
