//! The standard resilience stack for outbound HTTP calls, one engine for every client front.

mod budgets;
mod builder;
mod overrides;
mod reconfigure;
mod run;

use std::time::Duration;

use tidewall_core::backoff::Backoff;

pub use builder::ClientPoliciesBuilder;
pub use overrides::Overrides;
pub use reconfigure::Retuned;

use self::budgets::Budgets;
use super::{Authority, HttpClassifier, Idempotency};
use crate::adaptive::{AnyAlgorithm, KeyedAdaptiveLimiter};
use crate::breaker::KeyedCircuitBreaker;
use crate::bulkhead::KeyedBulkhead;
use crate::rate::KeyedRateLimiter;
use crate::rt::DefaultRuntime;
use crate::sync::{Arc, Swap};

/// The policies that protect outbound HTTP calls, applied per request in this order:
///
/// 1. a **total deadline** over every attempt and wait (default 30 s; no attempt starts with
///    less than [`min_attempt_time`](ClientPoliciesBuilder::min_attempt_time) left, default
///    zero);
/// 2. **retry** of what the [standard table](HttpClassifier) calls a retryable failure, with
///    exponential backoff and jitter (3 attempts, 200 ms doubling up to 5 s), at least the
///    server's `Retry-After` between attempts (the sleep capped at 60 s; a `Retry-After` that
///    ends past the deadline ends the call at once), drawing on a **retry budget per
///    authority** (retries add at most 20 % of the authority's calls, plus 10 per second), and
///    only for requests [`Idempotency`] allows to be sent again;
/// 3. a **circuit breaker per authority** (opens when half of at least 20 calls in 30 s
///    failed; 5 s break, then one probe), which a failure's `Retry-After` keeps open longer;
///    while it is open, calls to that authority are refused at once
///    ([`Rejected::CircuitOpen`](crate::Rejected::CircuitOpen), not retried), and the failure
///    that opened it is answered with its own response or error, not retried into the
///    refusal;
/// 4. a **bulkhead per authority** (512 calls at once, no queue; full, it refuses at once),
///    or instead an **adaptive limit per authority** (off by default: see
///    [`adaptive`](ClientPoliciesBuilder::adaptive)), and optionally a **rate limit per
///    authority** (waited for within the deadline);
/// 5. an **attempt timeout** (default 10 s), which the breaker counts as a failure.
///
/// Every stage is configurable on the [builder](ClientPoliciesBuilder). Per request,
/// [`Overrides`] changes the deadline, the attempt timeout, the number of attempts, whether
/// the request may be sent again and its priority in the authority's adaptive limit; the
/// per-authority stages change only with
/// [`reconfigure`](Self::reconfigure). An authority is scheme, host and port
/// ([`Authority`]). Each per-authority
/// table tracks at most `max_authorities` (default 10,000) at once and forgets an authority
/// only when no call of its is in flight there and, for the breakers, its breaker is closed
/// with a window empty or untouched for the breaker's `idle_ttl`
/// ([`KeyedCircuitBreaker`](crate::breaker::KeyedCircuitBreaker)'s rule), for the retry
/// budgets, no call has begun on it nor drawn a retry from it for the budget's window (a
/// request's retries may come long after it began), and for the rate
/// limits, its limit has rested to a full burst. One seen again starts
/// afresh there (an adaptive limit from its initial value). A table full of authorities it
/// may not forget refuses a new one with [`Rejected::KeysFull`](crate::Rejected::KeysFull),
/// but for the budgets' table, which gives it no budget (its call is sent once, not
/// retried), and the rate limits' table, which answers `RateLimited` until a key rests, and
/// that is waited for within the deadline as any rate-limit wait.
///
/// Fronts: [`ClientLayer`](crate::tower::http::ClientLayer) for a tower `Service` of
/// `http::Request` (hyper-util's client), and the `tidewall-reqwest` crate's middleware for
/// reqwest. Both call [`run`](Self::run), so they behave alike (under `ClientLayer` over
/// hyper-util's client, with the `hyper` feature, for hyper's own errors to be read alike).
///
/// **Hedging.** The stack has no hedge stage. A [`Hedge`](crate::hedge::Hedge) around
/// [`run`](Self::run) launches whole requests, each with its own retries, its draws on the
/// host's retry budget and its own slot in the host's bulkhead or limit: hedges multiply
/// retries. Give the requests it launches [`Overrides::no_retry`] (the hedge is then the only
/// second attempt), and hedge only requests that may be sent twice.
///
/// **Requests sent once.** A request whose method is not idempotent (POST, PATCH, without an
/// `Idempotency-Key`), or whose body cannot be copied (a stream), is never retried: it is
/// sent once, through the breaker, bulkhead, limiter and timeouts, and its response (a 503
/// included) comes back as it is.
///
/// ```
/// use tidewall::http::ClientPolicies;
///
/// let policies = ClientPolicies::standard();
/// assert_eq!(policies.max_authorities(), 10_000);
/// ```
pub struct ClientPolicies<R = DefaultRuntime> {
    live: Arc<Live<R>>,
}

/// What every clone shares: the requests' telemetry, fixed at build (it holds the stack's
/// name), and the stack, replaced whole by [`reconfigure`](ClientPolicies::reconfigure).
struct Live<R> {
    telemetry: crate::telemetry::CallTelemetry,
    /// A request reads it once, and keeps the settings it started with.
    stack: Swap<Inner<R>>,
    /// Held from a reconfiguration's plan to its swap: each is worked out against the stack
    /// the one before it left, never two against one.
    reconfiguring: crate::sync::Mutex<()>,
}

/// The `policy` the stack's requests are reported as (events, metrics).
const POLICY: &str = "http_client";

struct Inner<R> {
    rt: R,
    deadline: Option<Duration>,
    attempt_timeout: Option<Duration>,
    min_attempt_time: Duration,
    /// One attempt only when `retries` is off.
    backoff: Backoff,
    retries: bool,
    max_retry_after: Duration,
    /// The retry jitter's seed for every request (`None`: each draws a fresh one).
    seed: Option<u64>,
    /// Shared with the stacks a reconfiguration makes, which keep its budgets.
    budgets: Option<Arc<Budgets>>,
    breakers: Option<KeyedCircuitBreaker<Authority, R>>,
    bulkheads: Option<KeyedBulkhead<Authority, R>>,
    adaptive: Option<KeyedAdaptiveLimiter<Authority, AnyAlgorithm, R>>,
    limiters: Option<KeyedRateLimiter<Authority, R>>,
    max_authorities: usize,
    classifier: HttpClassifier,
    idempotency: Idempotency,
}

impl ClientPolicies {
    /// The standard stack (see the type's docs) on the default runtime.
    #[cfg(feature = "tokio")]
    pub fn standard() -> Self {
        Self::builder()
            .build()
            .unwrap_or_else(|e| unreachable!("the standard settings are valid: {e}"))
    }

    /// Starts from the standard stack on the default runtime.
    pub fn builder() -> ClientPoliciesBuilder {
        ClientPoliciesBuilder::new(DefaultRuntime::default())
    }
}

impl<R> ClientPolicies<R> {
    /// The stack in force: what a request starting now runs on.
    fn current(&self) -> std::sync::Arc<Inner<R>> {
        self.live.stack.load_full()
    }

    /// The per-authority breakers, if the stack has them: to watch a host's state, or to
    /// open or close one by hand, one already seen or not yet
    /// ([`get_or_make`](KeyedCircuitBreaker::get_or_make); a host forced open stays so
    /// through a reconfiguration, until it is reset). A handle to the table in force now: a
    /// [`reconfigure`](Self::reconfigure) that keeps the stage retunes this table in place,
    /// but one that removes the stage (or removes and adds it again) leaves the handle on a
    /// table no new request meets: ask again after a reconfiguration.
    pub fn breakers(&self) -> Option<KeyedCircuitBreaker<Authority, R>> {
        self.current().breakers.clone()
    }

    /// The per-authority bulkheads, if the stack has them: to watch the calls each host runs
    /// ([`busy`](KeyedBulkhead::busy)); a handle, as for [`breakers`](Self::breakers).
    pub fn bulkheads(&self) -> Option<KeyedBulkhead<Authority, R>> {
        self.current().bulkheads.clone()
    }

    /// The per-authority adaptive limiters, if the stack has them: to watch the limit each
    /// host has taught its limiter ([`limits`](KeyedAdaptiveLimiter::limits)) and its calls
    /// in flight; a handle, as for [`breakers`](Self::breakers).
    pub fn adaptive_limiters(&self) -> Option<KeyedAdaptiveLimiter<Authority, AnyAlgorithm, R>> {
        self.current().adaptive.clone()
    }

    /// The per-authority rate limiters, if the stack has them (a handle, as for
    /// [`breakers`](Self::breakers)).
    pub fn rate_limiters(&self) -> Option<KeyedRateLimiter<Authority, R>> {
        self.current().limiters.clone()
    }

    /// The most authorities tracked at once.
    pub fn max_authorities(&self) -> usize {
        self.current().max_authorities
    }

    /// The name the stack's policies carry in events and metrics.
    pub fn name(&self) -> &str {
        self.live.telemetry.name().as_str()
    }
}

impl<R: crate::rt::Clock> ClientPolicies<R> {
    /// Sets the gauges of the stack's per-authority tables (feature `metrics`), labelled
    /// with its [name](ClientPoliciesBuilder::name): `tidewall_keyed_keys` and
    /// `tidewall_keyed_max_keys` of each table (`policy` `keyed_breaker`, `keyed_bulkhead`,
    /// `keyed_adaptive`, `keyed_rate`, and `keyed_budget` for the retry budgets, whose full
    /// table sends a new host's requests once, unretried; 0 and 0 for a stage the stack does
    /// not have), and
    /// `tidewall_keyed_breaker_keys` (`state`): how many authorities' breakers are in each
    /// state, so a dashboard can show how many hosts are refused now (which ones: the transitions' `key` label, or
    /// [`not_closed`](KeyedCircuitBreaker::not_closed)). Call it before each scrape: gauges
    /// read this way cost the requests nothing.
    ///
    /// ```
    /// use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    /// use tidewall::breaker::CircuitBreaker;
    /// use tidewall::http::{Authority, ClientPolicies};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let policies = ClientPolicies::builder()
    ///     .name("upstreams")
    ///     .breaker(Some(CircuitBreaker::builder().consecutive_failures(1)))
    ///     .build()?;
    /// let down = Authority::from_uri(&"http://down.example/".parse()?).unwrap();
    /// policies.breakers().unwrap().try_acquire(&down)?.failure();
    ///
    /// let recorder = DebuggingRecorder::new();
    /// let snapshotter = recorder.snapshotter();
    /// metrics::with_local_recorder(&recorder, || policies.record_gauges());
    /// let open = snapshotter.snapshot().into_vec().into_iter().find_map(|(key, _, _, value)| {
    ///     let key = key.key();
    ///     let open = key.labels().any(|l| l.key() == "state" && l.value() == "open");
    ///     (key.name() == "tidewall_keyed_breaker_keys" && open).then_some(value)
    /// });
    /// assert_eq!(open, Some(DebugValue::Gauge(1.0.into())));
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "metrics")]
    pub fn record_gauges(&self) {
        use crate::telemetry::gauges;
        let inner = self.current();
        let name = self.live.telemetry.name();
        // A stage the stack does not have (or no longer has, after a reconfiguration) reads
        // 0 everywhere: its last values would otherwise stay in the exporter for good.
        let (keys, max, states) = inner.breakers.as_ref().map_or((0, 0, Vec::new()), |b| {
            let states = b.not_closed().into_iter().map(|(_, s)| s).collect();
            (b.len(), b.max_keys(), states)
        });
        gauges::keyed_table("keyed_breaker", name, keys, max);
        gauges::keyed_breaker_states(name, keys, &states);
        let sizes = |table: Option<(usize, usize)>| table.unwrap_or((0, 0));
        let (keys, max) = sizes(inner.bulkheads.as_ref().map(|t| (t.len(), t.max_keys())));
        gauges::keyed_table("keyed_bulkhead", name, keys, max);
        let (keys, max) = sizes(inner.adaptive.as_ref().map(|t| (t.len(), t.max_keys())));
        gauges::keyed_table("keyed_adaptive", name, keys, max);
        let (keys, max) = sizes(inner.limiters.as_ref().map(|t| (t.len(), t.max_keys())));
        gauges::keyed_table("keyed_rate", name, keys, max);
        let (keys, max) = sizes(inner.budgets.as_ref().map(|t| (t.len(), t.max_keys())));
        gauges::keyed_table("keyed_budget", name, keys, max);
    }
}

impl<R> Clone for ClientPolicies<R> {
    fn clone(&self) -> Self {
        Self {
            live: Arc::clone(&self.live),
        }
    }
}

impl<R> std::fmt::Debug for ClientPolicies<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.current();
        f.debug_struct("ClientPolicies")
            .field("name", self.live.telemetry.name())
            .field("deadline", &inner.deadline)
            .field("attempt_timeout", &inner.attempt_timeout)
            .field("min_attempt_time", &inner.min_attempt_time)
            .field("backoff", &inner.backoff)
            .field("breakers", &inner.breakers.is_some())
            .field("bulkheads", &inner.bulkheads.is_some())
            .field("adaptive", &inner.adaptive.is_some())
            .field("limiters", &inner.limiters.is_some())
            .field("max_authorities", &inner.max_authorities)
            .finish_non_exhaustive()
    }
}
