//! Scripted in-process HTTP hosts (no network) and the two fronts of the client stack: the
//! `ClientPolicies::run` loop and the tower `ClientLayer`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{Either, select};
use http::{Method, Request, Response};
use tidewall::breaker::CircuitBreaker;
use tidewall::http::{Authority, ClientPolicies, ClientPoliciesBuilder, Outbound, Overrides};
use tidewall::rt::{Clock, Runtime, Spawn};
use tidewall::testing::Clocked;
use tidewall::tower::http::ClientLayer;
use tidewall::{Backoff, Error, Jitter};
use tower::ServiceExt as _;
use tower_layer::Layer;

use super::{Gauge, ms, secs};

/// What a fake host does with one request.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Status(u16),
    /// A status with `Retry-After` in seconds.
    After(u16, u64),
    /// 200 after this long.
    Slow(Duration),
    /// The connection is refused: nothing reaches the host's script.
    Refused,
    Reset,
}

type Script = Arc<dyn Fn(u32) -> Answer + Send + Sync>;

/// Hosts keyed by `host:port` as the request spelled them (lowercased, port filled in), each
/// answering its script; every request that reaches one is counted, and so are the requests
/// each host is serving at once.
#[derive(Clone)]
pub struct Hosts<R> {
    rt: R,
    scripts: Arc<Mutex<HashMap<String, Script>>>,
    seen: Arc<Mutex<HashMap<String, u32>>>,
    gauges: Arc<Mutex<HashMap<String, Gauge>>>,
}

/// `host:port` of a request's URI, or `relative` without one.
pub fn host_of<B>(request: &Request<B>) -> String {
    let uri = request.uri();
    match uri.host() {
        None => "relative".to_owned(),
        Some(host) => {
            let default = if uri
                .scheme_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("https"))
            {
                443
            } else {
                80
            };
            format!(
                "{}:{}",
                host.to_ascii_lowercase(),
                uri.port_u16().unwrap_or(default)
            )
        }
    }
}

impl<R: Clock> Hosts<R> {
    pub fn new(rt: &R) -> Self {
        Self {
            rt: rt.clone(),
            scripts: Arc::default(),
            seen: Arc::default(),
            gauges: Arc::default(),
        }
    }

    /// `host` is `name:port`.
    pub fn script(&self, host: &str, script: impl Fn(u32) -> Answer + Send + Sync + 'static) {
        self.scripts
            .lock()
            .unwrap()
            .insert(host.to_owned(), Arc::new(script));
    }

    /// `host` answers these in turn, the last one repeating.
    pub fn play<const N: usize>(&self, host: &str, answers: [Answer; N]) {
        self.script(host, move |n| answers[(n as usize).min(N - 1)]);
    }

    pub fn seen(&self, host: &str) -> u32 {
        self.seen.lock().unwrap().get(host).copied().unwrap_or(0)
    }

    pub fn gauge(&self, host: &str) -> Gauge {
        self.gauges
            .lock()
            .unwrap()
            .entry(host.to_owned())
            .or_default()
            .clone()
    }

    pub fn send<B>(
        &self,
        request: Request<B>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<()>, std::io::Error>> + Send + 'static>> {
        let host = host_of(&request);
        let n = {
            let mut seen = self.seen.lock().unwrap();
            let n = seen.entry(host.clone()).or_insert(0);
            *n += 1;
            *n - 1
        };
        let script = self.scripts.lock().unwrap().get(&host).cloned();
        let answer = script.map_or(Answer::Status(200), |script| script(n));
        let running = self.gauge(&host).enter();
        let rt = self.rt.clone();
        Box::pin(async move {
            let _running = running;
            let status = |code: u16| Response::builder().status(code).body(()).unwrap();
            match answer {
                Answer::Status(code) => Ok(status(code)),
                Answer::After(code, secs) => Ok(Response::builder()
                    .status(code)
                    .header("retry-after", secs.to_string())
                    .body(())
                    .unwrap()),
                Answer::Slow(wait) => {
                    rt.sleep(wait).await;
                    Ok(status(200))
                }
                Answer::Refused => Err(std::io::ErrorKind::ConnectionRefused.into()),
                Answer::Reset => Err(std::io::ErrorKind::ConnectionReset.into()),
            }
        })
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Front {
    Loop,
    Tower,
}

pub const FRONTS: [Front; 2] = [Front::Loop, Front::Tower];

pub type Outcome = Result<Response<()>, Error<std::io::Error>>;
pub type Policies<R> = ClientPolicies<Clocked<R>>;

pub async fn send<R: Runtime>(
    front: Front,
    policies: &Policies<R>,
    hosts: &Hosts<Clocked<R>>,
    request: Request<String>,
) -> Outcome {
    match front {
        Front::Loop => {
            let overrides = request
                .extensions()
                .get::<Overrides>()
                .copied()
                .unwrap_or_default();
            policies
                .run(request, overrides, |request| hosts.send(request))
                .await
        }
        Front::Tower => {
            let hosts = hosts.clone();
            let client = tower::service_fn(move |request: Request<String>| hosts.send(request));
            ClientLayer::new(policies.clone())
                .layer(client)
                .oneshot(request)
                .await
        }
    }
}

pub fn request(method: Method, uri: &str) -> Request<String> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body("body".to_owned())
        .unwrap()
}

pub fn get(uri: &str) -> Request<String> {
    request(Method::GET, uri)
}

pub fn with(mut request: Request<String>, overrides: Overrides) -> Request<String> {
    request.extensions_mut().insert(overrides);
    request
}

pub fn status(outcome: &Outcome) -> Option<u16> {
    outcome.as_ref().ok().map(|r| r.status().as_u16())
}

pub fn auth(uri: &str) -> Authority {
    Authority::from_uri(&uri.parse().unwrap()).unwrap()
}

pub fn attempts(n: u32) -> Backoff {
    Backoff::constant(ms(10))
        .jitter(Jitter::None)
        .max_attempts(n)
        .build()
        .unwrap()
}

/// Three attempts 10 ms apart, 100 ms attempts, 5 s deadline, no budget, and a breaker per
/// host opening on `failures` in a row for 10 s.
pub fn builder<R: Runtime>(rt: &Clocked<R>, failures: u32) -> ClientPoliciesBuilder<Clocked<R>> {
    ClientPolicies::builder()
        .runtime(rt.clone())
        .retry(attempts(3))
        .attempt_timeout(Some(ms(100)))
        .deadline(Some(secs(5)))
        .retry_budget(None)
        .breaker(Some(
            CircuitBreaker::builder()
                .no_failure_rate()
                .consecutive_failures(failures)
                .break_duration(secs(10)),
        ))
}

/// A request whose body cannot be copied.
pub struct Streaming(pub Request<String>);

impl Outbound for Streaming {
    fn method(&self) -> &Method {
        self.0.method()
    }
    fn headers(&self) -> &http::HeaderMap {
        self.0.headers()
    }
    fn authority(&self) -> Option<Authority> {
        Authority::from_uri(self.0.uri())
    }
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

/// Sends `request` on a task of its own.
pub fn spawn_send<R: Runtime>(
    rt: &Clocked<R>,
    front: Front,
    policies: &Policies<R>,
    hosts: &Hosts<Clocked<R>>,
    request: Request<String>,
) -> <Clocked<R> as Spawn>::JoinHandle<Outcome> {
    let (policies, hosts) = (policies.clone(), hosts.clone());
    rt.spawn(async move { send(front, &policies, &hosts, request).await })
}

/// Runs `outcome` until it ends or `after` passes; `None` when it was dropped.
pub async fn drop_after<R: Runtime>(
    rt: &Clocked<R>,
    after: Duration,
    outcome: impl Future<Output = Outcome>,
) -> Option<Outcome> {
    match select(Box::pin(outcome), Box::pin(rt.sleep(after))).await {
        Either::Left((outcome, _)) => Some(outcome),
        Either::Right(((), _)) => None,
    }
}

/// Whether `request`, sent through `front`, was still running after `after` (and dropped).
pub async fn dropped<R: Runtime>(
    rt: &Clocked<R>,
    front: Front,
    policies: &Policies<R>,
    hosts: &Hosts<Clocked<R>>,
    request: Request<String>,
    after: Duration,
) -> bool {
    drop_after(rt, after, send(front, policies, hosts, request))
        .await
        .is_none()
}
