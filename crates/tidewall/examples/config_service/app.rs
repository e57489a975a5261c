//! The service of the `config_service` example, shared with its loopback test
//! (`tests/config_service.rs`): the app itself, and the small HTTP client, Prometheus text
//! parser and file helpers that the demo and the test drive it with.
//!
//! Nothing here installs anything global: the caller installs the metrics recorder and hands
//! its handle to [`App::new`].

#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing;
use futures_util::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use tidewall::breaker::State as BreakerState;
use tidewall::config::{LivePipeline, Registry, watch_file_on};
use tidewall::rt::{Clock, Tokio};
use tidewall::{Error, Rejected, RetryAfter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Any error, for setting up and for the demo.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The configuration the example ships (`tidewall.toml` beside this file).
pub(crate) const CONFIG: &str = include_str!("tidewall.toml");

/// The instance behind `GET /quote/{symbol}`.
pub(crate) const QUOTES: &str = "quotes";
/// The registry's name: the `registry` label of its reload series.
pub(crate) const REGISTRY: &str = "config_service";

/// The instance behind `GET /quote/FAIL`.
pub(crate) const FLAKY: &str = "flaky";

/// The symbol whose upstream always fails.
pub(crate) const FAILING: &str = "FAIL";

/// How long the watcher waits after a change for the writes that follow it.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The upstream's error.
#[derive(Debug)]
pub(crate) struct UpstreamError(String);

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UpstreamError {}

/// The simulated upstream: a price after about a millisecond; `FAIL` always fails.
async fn upstream(symbol: &str) -> Result<f64, UpstreamError> {
    tokio::time::sleep(Duration::from_millis(1)).await;
    if symbol == FAILING {
        return Err(UpstreamError(format!("upstream failed for {symbol}")));
    }
    // A made-up price that depends on the symbol only: 10.00 ..= 1009.99.
    let cents = symbol.bytes().fold(7_u32, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(u32::from(b))
    }) % 100_000;
    Ok(f64::from(cents + 1_000) / 100.0)
}

/// The service: its policies (from the configuration file, and following it), its two
/// pipelines and its metrics.
pub(crate) struct App {
    registry: Arc<Registry>,
    quotes: LivePipeline,
    flaky: LivePipeline,
    metrics: PrometheusHandle,
    watcher: tokio::task::JoinHandle<()>,
}

impl App {
    /// Builds the policies from the TOML file at `path`, the two pipelines from them, and
    /// starts watching the file (each reload's outcome goes to stderr). Call it inside a tokio
    /// runtime, after installing the recorder `metrics` belongs to: policies register their
    /// metrics when they are built.
    ///
    /// The pipelines follow every valid change of the file: their policies in place, their
    /// deadline, attempt timeout and retry schedule for the calls after the reload.
    pub(crate) fn new(path: impl AsRef<Path>, metrics: PrometheusHandle) -> Result<Self, BoxError> {
        let path = path.as_ref();
        let config = tidewall::config::Config::from_toml(&std::fs::read_to_string(path)?)?;
        let registry = Arc::new(Registry::builder(config).name(REGISTRY).build()?);
        let quotes = registry.pipeline(QUOTES)?;
        let flaky = registry.pipeline(FLAKY)?;

        let mut reloads = watch_file_on(&Tokio, Arc::clone(&registry), path, DEBOUNCE)?;
        let shown = path.display().to_string();
        let watcher = tokio::spawn(async move {
            while let Some(outcome) = reloads.next().await {
                match outcome {
                    Ok(reload) => eprintln!(
                        "config_service: {shown} reloaded ({} policies retuned, {} built, {} pipelines)",
                        reload.retuned, reload.built, reload.pipelines
                    ),
                    Err(refused) => eprintln!(
                        "config_service: {shown} refused, the configuration in force stays: {refused}"
                    ),
                }
            }
        });
        Ok(Self {
            registry,
            quotes,
            flaky,
            metrics,
            watcher,
        })
    }

    /// Serves the app on `listener` until the server fails.
    pub(crate) async fn serve(self, listener: TcpListener) -> io::Result<()> {
        let router = Router::new()
            .route("/quote/{symbol}", routing::get(quote))
            .route("/metrics", routing::get(metrics))
            .route("/health", routing::get(health))
            .with_state(Arc::new(self));
        axum::serve(listener, router).await
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// A JSON response.
fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `GET /quote/{symbol}`: 200 with the price; 429 when rate limited, 503 for the other
/// refusals, 504 when the last attempt timed out, 502 when the upstream failed.
async fn quote(State(app): State<Arc<App>>, UrlPath(symbol): UrlPath<String>) -> Response {
    let result = if symbol == FAILING {
        app.flaky.call(|| upstream(&symbol)).await
    } else {
        app.quotes.call(|| upstream(&symbol)).await
    };
    let (status, body, hint) = match result {
        Ok(price) => (
            StatusCode::OK,
            json!({ "symbol": symbol, "price": price }),
            None,
        ),
        Err(Error::Rejected(rejected)) => {
            let status = match rejected {
                Rejected::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            let body = json!({ "error": rejected.to_string(), "reason": rejected.kind() });
            (status, body, rejected.retry_after())
        }
        Err(Error::TimedOut) => (
            StatusCode::GATEWAY_TIMEOUT,
            json!({ "error": "the upstream timed out" }),
            None,
        ),
        Err(Error::Inner(failed)) => (
            StatusCode::BAD_GATEWAY,
            json!({ "error": failed.to_string() }),
            None,
        ),
        Err(other) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": other.to_string() }),
            None,
        ),
    };
    let mut response = json_response(status, &body);
    if let Some(hint) = hint {
        // Whole seconds, rounded up: never earlier than the policy said.
        let seconds = hint.as_secs() + u64::from(hint.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// `GET /metrics`: every metric in the Prometheus text format, the gauges read just now.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    app.registry.record_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// `GET /health`: every policy's state; 503 "degraded" when a breaker is open.
async fn health(State(app): State<Arc<App>>) -> Response {
    let registry = &app.registry;
    let mut degraded = false;
    let mut breakers = serde_json::Map::new();
    for (name, breaker) in registry.breakers() {
        let state = breaker.state();
        degraded |= matches!(state, BreakerState::Open | BreakerState::ForcedOpen);
        breakers.insert(name.to_string(), json!(state.as_str()));
    }
    let mut bulkheads = serde_json::Map::new();
    for (name, bulkhead) in registry.bulkheads() {
        let figures = json!({
            "in_flight": bulkhead.in_flight(),
            "queued": bulkhead.queued(),
            "capacity": bulkhead.capacity(),
        });
        bulkheads.insert(name.to_string(), figures);
    }
    let mut adaptive = serde_json::Map::new();
    for (name, limiter) in registry.adaptive_limiters() {
        let figures = json!({
            "limit": limiter.limit(),
            "in_flight": limiter.in_flight(),
            "queued": limiter.queued(),
        });
        adaptive.insert(name.to_string(), figures);
    }
    let mut limiters = serde_json::Map::new();
    for (name, limiter) in registry.rate_limiters() {
        let figures = json!({ "available": limiter.available(), "burst": limiter.gcra().burst() });
        limiters.insert(name.to_string(), figures);
    }
    let now = registry.runtime().now();
    let mut budgets = serde_json::Map::new();
    for (name, budget) in registry.retry_budgets() {
        budgets.insert(name.to_string(), json!({ "balance": budget.balance(now) }));
    }
    let (status, word) = if degraded {
        (StatusCode::SERVICE_UNAVAILABLE, "degraded")
    } else {
        (StatusCode::OK, "up")
    };
    let body = json!({
        "status": word,
        "breakers": breakers,
        "bulkheads": bulkheads,
        "adaptive_limiters": adaptive,
        "rate_limiters": limiters,
        "retry_budgets": budgets,
    });
    json_response(status, &body)
}

/// A response as the tiny client reads it.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The status code.
    pub(crate) status: u16,
    /// The headers, names in lowercase.
    pub(crate) headers: Vec<(String, String)>,
    /// The body.
    pub(crate) body: String,
}

impl Reply {
    /// The first header named `name` (lowercase).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub(crate) fn json(&self) -> Result<Value, BoxError> {
        Ok(serde_json::from_str(&self.body)?)
    }
}

/// `GET path` from `addr` over HTTP/1.1, one connection per request.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Result<Reply, BoxError> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the response has no end of headers")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .ok_or_else(|| format!("no status in {status_line:?}"))?
        .parse()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let reply = Reply {
        status,
        headers,
        body: body.to_owned(),
    };
    if reply.header("transfer-encoding").is_some() {
        return Err(
            format!("a chunked response, which this client does not read: {reply:?}").into(),
        );
    }
    if let Some(length) = reply.header("content-length") {
        let length: usize = length.parse()?;
        if length != reply.body.len() {
            return Err(format!("content-length {length}, body of {}", reply.body.len()).into());
        }
    }
    Ok(reply)
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// The metric's name.
    pub(crate) name: String,
    /// Its labels, by name.
    pub(crate) labels: BTreeMap<String, String>,
    /// Its value.
    pub(crate) value: f64,
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.labels.is_empty() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            write!(f, "{{{}}}", labels.join(","))?;
        }
        write!(f, " {}", self.value)
    }
}

/// A parsed `/metrics` page: its samples, each series once.
#[derive(Debug, Clone)]
pub(crate) struct Scrape(Vec<Sample>);

impl Scrape {
    /// Parses the Prometheus text format: comments skipped, labels in any order, a
    /// timestamp after the value ignored.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut samples: Vec<Sample> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let sample =
                parse_sample(line).map_err(|e| format!("line {}: {e}: {line}", number + 1))?;
            if samples
                .iter()
                .any(|s| s.name == sample.name && s.labels == sample.labels)
            {
                return Err(format!("line {}: a series seen twice: {line}", number + 1));
            }
            samples.push(sample);
        }
        Ok(Self(samples))
    }

    /// The series `name` with exactly the labels `labels` (in any order).
    pub(crate) fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Sample> {
        self.0.iter().find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|found| found == v))
        })
    }

    /// The value of the series `name` with exactly the labels `labels` (in any order).
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.find(name, labels).map(|s| s.value)
    }
}

/// One sample line: `name{label="value",...} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inside) = rest.strip_prefix('{') {
        rest = inside;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once('=').ok_or("a label without `=`")?;
            let after = after
                .trim_start()
                .strip_prefix('"')
                .ok_or("a label value without quotes")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((at, '"')) => break at,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, escaped)) => value.push(escaped),
                        None => return Err("an unfinished escape".into()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("an unfinished label value".into()),
                }
            };
            if labels.insert(key.trim().to_owned(), value).is_some() {
                return Err(format!("label {} twice", key.trim()));
            }
            rest = after[end + 1..].trim_start();
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("labels not separated by `,`".into());
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = value
        .parse::<f64>()
        .map_err(|e| format!("value {value:?}: {e}"))?;
    if fields.nth(1).is_some() {
        return Err("more than a value and a timestamp".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `GET /metrics`, parsed.
pub(crate) async fn scrape(addr: SocketAddr) -> Result<Scrape, BoxError> {
    let reply = get(addr, "/metrics").await?;
    if reply.status != 200 {
        return Err(format!("/metrics answered {}: {}", reply.status, reply.body).into());
    }
    Ok(Scrape::parse(&reply.body)?)
}

/// Scrapes `/metrics` until the series `name{labels}` reaches `at_least`, every 50 ms for at
/// most `within` (the file watcher reloads in the background: this is how to know it did).
pub(crate) async fn wait_for(
    addr: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
    within: Duration,
) -> Result<Scrape, BoxError> {
    let give_up = tokio::time::Instant::now() + within;
    loop {
        let scrape = scrape(addr).await?;
        if scrape.value(name, labels).is_some_and(|v| v >= at_least) {
            return Ok(scrape);
        }
        if tokio::time::Instant::now() >= give_up {
            let seen = scrape.value(name, labels);
            return Err(format!("{name}{labels:?} still {seen:?} after {within:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `config` with the quotes rate limit set to `count` an hour and bursts of `burst`: the
/// `count` and `burst` lines of `[instances.quotes.rate_limit]` rewritten.
pub(crate) fn with_quote_limit(config: &str, count: u32, burst: u32) -> String {
    let mut out = String::with_capacity(config.len());
    let mut in_section = false;
    for line in config.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            in_section = trimmed.starts_with("[instances.quotes.rate_limit]");
        }
        let key = trimmed.split('=').next().map(str::trim);
        let line = match (in_section, key) {
            (true, Some("count")) => format!("count = {count}"),
            (true, Some("burst")) => format!("burst = {burst}"),
            _ => line.to_owned(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Replaces the file at `path` with `text` as deployments do: a new file beside it, renamed
/// over it, so that a reader sees the old text or the new, whole.
pub(crate) fn replace_file(path: &Path, text: &str) -> io::Result<()> {
    let mut new = path.as_os_str().to_owned();
    new.push(".new");
    let new = PathBuf::from(new);
    std::fs::write(&new, text)?;
    std::fs::rename(&new, path)
}
