//! Builder for [`ClientPolicies`].

use std::time::Duration;

use tidewall_core::backoff::{Backoff, BackoffBuilder};

use super::{Budgets, ClientPolicies, Inner, Live, POLICY};
use crate::ConfigError;
use crate::adaptive::{AdaptiveLimiterBuilder, AnyAlgorithm};
use crate::breaker::{CircuitBreaker, CircuitBreakerBuilder, Window};
use crate::budget::RetryBudgetPolicy;
use crate::bulkhead::{Bulkhead, BulkheadBuilder};
use crate::http::{HttpClassifier, Idempotency};
use crate::rate::KeyedRateLimiterBuilder;
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::{Arc, Swap};
use tidewall_core::backoff::Jitter;

/// Configures [`ClientPolicies`]: every setting starts at the standard stack's (see
/// [`ClientPolicies`]); each stage can be replaced or turned off.
///
/// ```
/// use std::time::Duration;
/// use tidewall::breaker::CircuitBreaker;
/// use tidewall::http::ClientPolicies;
/// use tidewall::Backoff;
///
/// let policies = ClientPolicies::builder()
///     .name("payments_client")
///     .deadline(Some(Duration::from_secs(5)))
///     .attempt_timeout(Some(Duration::from_secs(1)))
///     .retry(Backoff::exponential(Duration::from_millis(50)).max_attempts(4).build()?)
///     .breaker(Some(CircuitBreaker::builder().consecutive_failures(5)))
///     .bulkhead(None)
///     .build()?;
/// # let _ = policies;
/// # Ok::<(), tidewall::ConfigError>(())
/// ```
#[must_use]
#[derive(Clone)]
pub struct ClientPoliciesBuilder<R = DefaultRuntime> {
    rt: R,
    name: crate::Name,
    deadline: Option<Duration>,
    attempt_timeout: Option<Duration>,
    min_attempt_time: Duration,
    retry: Stage<Backoff>,
    max_retry_after: Duration,
    seed: Option<u64>,
    budget: Stage<RetryBudgetPolicy>,
    breaker: Option<CircuitBreakerBuilder>,
    bulkhead: Option<BulkheadBuilder>,
    adaptive: Option<AdaptiveLimiterBuilder<AnyAlgorithm>>,
    rate_limit: Option<KeyedRateLimiterBuilder>,
    max_authorities: usize,
    idle_ttl: Option<Duration>,
    classifier: HttpClassifier,
    idempotency: Idempotency,
    events: Option<crate::telemetry::Listener>,
}

/// A stage whose standard setting is validated in `build`, with the rest.
#[derive(Clone)]
enum Stage<T> {
    Standard,
    With(T),
    Off,
}

impl<T> Stage<T> {
    fn resolve(
        self,
        standard: impl FnOnce() -> Result<T, ConfigError>,
    ) -> Result<Option<T>, ConfigError> {
        match self {
            Self::Standard => standard().map(Some),
            Self::With(value) => Ok(Some(value)),
            Self::Off => Ok(None),
        }
    }
}

impl<T> From<Option<T>> for Stage<T> {
    fn from(value: Option<T>) -> Self {
        value.map_or(Self::Off, Self::With)
    }
}

/// The standard backoff: 3 attempts, 200 ms doubling up to 5 s, full jitter.
fn standard_backoff() -> BackoffBuilder {
    Backoff::exponential(Duration::from_millis(200))
        .factor(2.0)
        .max_delay(Duration::from_secs(5))
        .jitter(Jitter::Full)
        .max_attempts(3)
}

/// The standard breaker: half of at least 20 calls in 30 s failed opens it for 5 s.
fn standard_breaker() -> CircuitBreakerBuilder {
    CircuitBreaker::builder()
        .failure_rate(0.5)
        .minimum_calls(20)
        .window(Window::Time {
            span: Duration::from_secs(30),
            buckets: 10,
        })
        .break_duration(Duration::from_secs(5))
        .half_open_probes(1)
}

impl<R> ClientPoliciesBuilder<R> {
    pub(super) fn new(rt: R) -> Self {
        Self {
            rt,
            name: crate::Name::from_static("http_client"),
            deadline: Some(Duration::from_secs(30)),
            attempt_timeout: Some(Duration::from_secs(10)),
            min_attempt_time: Duration::ZERO,
            retry: Stage::Standard,
            max_retry_after: crate::retry::DEFAULT_MAX_RETRY_AFTER,
            seed: None,
            budget: Stage::Standard,
            breaker: Some(standard_breaker()),
            bulkhead: Some(Bulkhead::builder(512).reject_when_full()),
            adaptive: None,
            rate_limit: None,
            max_authorities: 10_000,
            idle_ttl: None,
            classifier: HttpClassifier::standard(),
            idempotency: Idempotency::standard(),
            events: None,
        }
    }

    /// Runs every timer and policy on `rt`.
    pub fn runtime<R2>(self, rt: R2) -> ClientPoliciesBuilder<R2> {
        ClientPoliciesBuilder {
            rt,
            name: self.name,
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            min_attempt_time: self.min_attempt_time,
            retry: self.retry,
            max_retry_after: self.max_retry_after,
            seed: self.seed,
            budget: self.budget,
            breaker: self.breaker,
            bulkhead: self.bulkhead,
            adaptive: self.adaptive,
            rate_limit: self.rate_limit,
            max_authorities: self.max_authorities,
            idle_ttl: self.idle_ttl,
            classifier: self.classifier,
            idempotency: self.idempotency,
            events: self.events,
        }
    }

    /// The name the policies carry in events and metrics (default `http_client`): give each
    /// client its own, or two clients' requests count in one series.
    pub fn name(mut self, name: impl Into<crate::Name>) -> Self {
        self.name = name.into();
        self
    }

    /// Calls `listener` with each request's [`Event`](crate::telemetry::Event)s, as
    /// `policy` `http_client`: how the request ended ([`Succeeded`], [`Failed`] or
    /// [`Ignored`] by the [classifier](Self::classifier)'s verdict on the answer, [`Rejected`]
    /// with the refusal, [`TimedOut`] when the last attempt timed out, [`Cancelled`] when the
    /// request's future was dropped after its first poll, or unwound by a panic in the
    /// send), each retry scheduled with its delay ([`RetryScheduled`]) and each retry the
    /// authority's budget refused ([`BudgetExhausted`]; a request whose authority got no
    /// budget, the budgets' table full, is sent once with no such event). Each event carries
    /// the request's authority in [`Event::key`](crate::telemetry::Event::key)
    /// (`https://api.example:443`; `None` for a request without one), so a listener can
    /// count requests, refusals and retries per host: which host's bulkhead or limit refused
    /// is a `Rejected` event with that host's key. A listener that panics unwinds into the
    /// request (see [`Event`](crate::telemetry::Event)): one that panics at a
    /// `RetryScheduled` then hears the request once more, as `Cancelled`. The per-authority
    /// policies keep their own listeners (set on the builders given to
    /// [`breaker`](Self::breaker) and the others), which hear each attempt; a breaker's
    /// events carry the authority too.
    ///
    /// [`Succeeded`]: crate::telemetry::EventKind::Succeeded
    /// [`Failed`]: crate::telemetry::EventKind::Failed
    /// [`Ignored`]: crate::telemetry::EventKind::Ignored
    /// [`Rejected`]: crate::telemetry::EventKind::Rejected
    /// [`TimedOut`]: crate::telemetry::EventKind::TimedOut
    /// [`Cancelled`]: crate::telemetry::EventKind::Cancelled
    /// [`RetryScheduled`]: crate::telemetry::EventKind::RetryScheduled
    /// [`BudgetExhausted`]: crate::telemetry::EventKind::BudgetExhausted
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use tidewall::http::{ClientPolicies, Overrides};
    /// use tidewall::telemetry::{Event, EventKind};
    /// use tidewall::Backoff;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let policies = ClientPolicies::builder()
    ///     .name("catalog")
    ///     .retry(Backoff::constant(Duration::from_millis(10)).max_attempts(3).build()?)
    ///     .on_event(move |event: &Event<'_>| {
    ///         log.lock().unwrap().push(format!("{}: {:?}", event.key.unwrap_or("-"), event.kind))
    ///     })
    ///     .build()?;
    /// let request = http::Request::get("http://catalog.example/items").body(()).unwrap();
    /// let statuses = Mutex::new(vec![200, 503]);
    /// let response = policies
    ///     .run(request, Overrides::new(), |_request| {
    ///         let status = statuses.lock().unwrap().pop().unwrap();
    ///         async move {
    ///             Ok::<_, std::io::Error>(http::Response::builder().status(status).body(()).unwrap())
    ///         }
    ///     })
    ///     .await;
    /// assert_eq!(response.unwrap().status(), 200);
    /// let seen = seen.lock().unwrap();
    /// assert!(seen[0].starts_with("http://catalog.example:80: RetryScheduled { attempt: 1"));
    /// assert_eq!(seen[1], "http://catalog.example:80: Succeeded");
    /// # Ok(()) }
    /// ```
    pub fn on_event(
        mut self,
        listener: impl Fn(&crate::telemetry::Event<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.events = Some(crate::telemetry::Listener::new(listener));
        self
    }

    /// The whole request's deadline (default 30 s; `None`: none).
    pub fn deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Each attempt's timeout (default 10 s; `None`: none).
    pub fn attempt_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Starts an attempt, or a retry's backoff sleep, only if more than `time` would be left
    /// for it before the deadline (default zero: any time left will do), as
    /// [`Retry::min_attempt_time`](crate::retry::Retry::min_attempt_time): set it near the
    /// host's usual latency, so that the last retry is not doomed from the start. A request
    /// whose deadline is no longer than this is refused at once with
    /// [`Rejected::DeadlineExceeded`](crate::Rejected::DeadlineExceeded), nothing sent (as
    /// the retry future does; a [`Pipeline`](crate::pipeline::Pipeline) starts a first
    /// attempt that waited for nothing whatever its minimum); a
    /// retry it stops leaves the last attempt's answer as the request's (as when the backoff
    /// would sleep past the deadline). Without a deadline it has no effect. The stack's own
    /// waits inside an attempt (a bulkhead slot, a rate-limit token) are bounded by the
    /// deadline alone.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::http::{ClientPolicies, Overrides};
    /// use tidewall::{Error, Rejected};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let policies = ClientPolicies::builder()
    ///     .min_attempt_time(Duration::from_millis(300))
    ///     .build()?;
    /// let request = http::Request::get("http://api.example/items").body(()).unwrap();
    /// let short = Overrides::new().deadline(Duration::from_millis(200));
    /// let result = policies
    ///     .run(request, short, |_request| async {
    ///         Ok::<_, std::io::Error>(http::Response::new(()))
    ///     })
    ///     .await;
    /// assert!(matches!(result, Err(Error::Rejected(Rejected::DeadlineExceeded))));
    /// # Ok(()) }
    /// ```
    pub fn min_attempt_time(mut self, time: Duration) -> Self {
        self.min_attempt_time = time;
        self
    }

    /// Retries on this backoff (its `max_attempts` counts the first attempt).
    pub fn retry(mut self, backoff: Backoff) -> Self {
        self.retry = Stage::With(backoff);
        self
    }

    /// Never retries: every request is sent once.
    pub fn no_retry(mut self) -> Self {
        self.retry = Stage::Off;
        self
    }

    /// The longest a `Retry-After` may hold a retry back (default 60 s): a longer one is cut
    /// to this. The cut only shortens the sleep: the deadline is held against the server's
    /// whole `Retry-After`, so a request whose deadline ends before the server's time is
    /// answered at once with the response, not retried sooner than the server asked. It caps
    /// the retry's wait only: how long a failure's `Retry-After` holds the authority's
    /// breaker open is the breaker's own cap,
    /// [`max_open_hint`](crate::breaker::CircuitBreakerBuilder::max_open_hint) (default 60 s).
    pub fn max_retry_after(mut self, cap: Duration) -> Self {
        self.max_retry_after = cap;
        self
    }

    /// Fixes the retry jitter seed: every request draws its delays from this seed, so a test
    /// in virtual time sees the same schedule each run (by default each request draws a fresh
    /// one, so requests failing together do not retry in lockstep).
    ///
    /// ```
    /// use tidewall::http::ClientPolicies;
    ///
    /// let policies = ClientPolicies::builder().seed(7).build()?;
    /// # let _ = policies;
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The retry budget each authority gets (default 20 % of its calls plus 10 per second;
    /// `None`: retries are limited by the backoff alone).
    pub fn retry_budget(mut self, budget: Option<RetryBudgetPolicy>) -> Self {
        self.budget = budget.into();
        self
    }

    /// The breaker each authority gets (`None`: no breaker). Its name and runtime are
    /// replaced by the stack's.
    pub fn breaker(mut self, breaker: Option<CircuitBreakerBuilder>) -> Self {
        self.breaker = breaker;
        self
    }

    /// The bulkhead each authority gets (default 512 calls at once, no queue; `None`: no
    /// bulkhead). A builder given here keeps its own queue and wait (a `Bulkhead::builder`
    /// queues by default: set `max_queue(0)` to refuse at once); its name and runtime are
    /// replaced by the stack's.
    pub fn bulkhead(mut self, bulkhead: Option<BulkheadBuilder>) -> Self {
        self.bulkhead = bulkhead;
        self
    }

    /// An adaptive limit on each authority's attempts in flight, in place of the bulkhead
    /// (default none; set [`bulkhead(None)`](Self::bulkhead) with it): each host's limit
    /// follows its own latency and drops, as the limiter's algorithm says. Every attempt
    /// takes a slot after the breaker admitted it and holds it through the rate limit's
    /// wait; its sample is timed from its send (the stack's own waits are not the host's
    /// latency), and teaches the algorithm how it ended,
    /// by the [classifier](Self::classifier) as the breaker counts it: a failure (in the
    /// standard table a 5xx, a 408, a 429, a timeout or a failed connection) is a drop, a
    /// success a sample of the host's latency, what it ignores nothing. An attempt refused
    /// later (by the rate limit) or cut by the deadline teaches nothing. A limiter with a
    /// queue waits within the deadline. Its name and runtime are replaced by the stack's.
    /// Attempts have the request's [`Overrides::priority`](super::Overrides::priority)
    /// ([`Priority::Default`](crate::admission::Priority::Default) unless it says otherwise),
    /// and are admitted within that priority's share of the limit: a `default` share below
    /// 1 keeps the rest of each host's limit for requests marked critical.
    ///
    /// ```
    /// use tidewall::adaptive::{AdaptiveLimiter, AnyAlgorithm, Gradient2};
    /// use tidewall::http::ClientPolicies;
    ///
    /// let gradient = Gradient2::builder().min_limit(4).initial_limit(32).max_limit(512).build()?;
    /// let policies = ClientPolicies::builder()
    ///     .bulkhead(None)
    ///     .adaptive(Some(AdaptiveLimiter::builder(AnyAlgorithm::from(gradient))))
    ///     .build()?;
    /// assert!(policies.adaptive_limiters().is_some());
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn adaptive(mut self, limit: Option<AdaptiveLimiterBuilder<AnyAlgorithm>>) -> Self {
        self.adaptive = limit;
        self
    }

    /// The rate limit each authority gets (default none), waited for within the deadline,
    /// last before the send: an attempt holds its bulkhead or adaptive slot while it waits,
    /// so the token is taken just before the send and sends keep the limit's pace (tokens
    /// taken before a queue would let the attempts that waited in it go out together). Its
    /// name and runtime are replaced by the stack's.
    pub fn rate_limit(mut self, limit: Option<KeyedRateLimiterBuilder>) -> Self {
        self.rate_limit = limit;
        self
    }

    /// The most authorities tracked at once by each per-authority table (default 10,000), a
    /// hard bound; an authority is forgotten only when nothing depends on it. The bound is
    /// split over up to 64 shards by the authority's hash, and a new authority is refused
    /// when its own shard is full: so a table of busy authorities may refuse a new one while
    /// it holds fewer than the bound (typically from 83 % of 10,000 on; the figures are in
    /// [`KeyedCircuitBreakerBuilder::max_keys`](crate::breaker::KeyedCircuitBreakerBuilder::max_keys)).
    /// A new one meeting a full shard is refused with
    /// [`Rejected::KeysFull`](crate::Rejected::KeysFull),
    /// but for the rate limit's table, whose full shard answers `RateLimited` until a key
    /// rests (that is waited for within the deadline, as any rate-limit wait), and the retry
    /// budgets' table, whose full shard gives the new authority no budget: its requests are
    /// sent once, not retried (the `keyed_budget` gauge of
    /// [`record_gauges`](ClientPolicies::record_gauges) shows it filling).
    pub fn max_authorities(mut self, max: usize) -> Self {
        self.max_authorities = max;
        self
    }

    /// How long an authority whose breaker is closed with failures in its window is kept
    /// after its last call (default 60 s; see
    /// [`KeyedCircuitBreakerBuilder::idle_ttl`](crate::breaker::KeyedCircuitBreakerBuilder::idle_ttl));
    /// read only with a breaker stage.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::http::ClientPolicies;
    ///
    /// let policies = ClientPolicies::builder().idle_ttl(Duration::from_secs(300)).build()?;
    /// assert_eq!(policies.breakers().unwrap().idle_ttl(), Duration::from_secs(300));
    /// # Ok::<(), tidewall::ConfigError>(())
    /// ```
    pub fn idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = Some(ttl);
        self
    }

    /// How responses and errors are classified (default [`HttpClassifier::standard`]).
    pub fn classifier(mut self, classifier: HttpClassifier) -> Self {
        self.classifier = classifier;
        self
    }

    /// Which requests may be sent again (default [`Idempotency::standard`]).
    pub fn idempotency(mut self, idempotency: Idempotency) -> Self {
        self.idempotency = idempotency;
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    ///
    /// The [`ConfigError`] of any stage's builder; [`ConfigError::Conflict`] for a bulkhead
    /// and an adaptive limit together; [`ConfigError::Zero`] for `max_authorities == 0` or a
    /// zero deadline or attempt timeout; [`ConfigError::DurationOverflow`] for a deadline or
    /// attempt timeout (as a [`Pipeline`](crate::pipeline::Pipeline) refuses them), or a
    /// `max_retry_after` or `min_attempt_time`, above `u64::MAX` nanoseconds.
    pub fn build(self) -> Result<ClientPolicies<R>, ConfigError>
    where
        R: Clock,
    {
        let (name, events, rt) = (self.name.clone(), self.events.clone(), self.rt.clone());
        let stack = self.build_inner()?;
        let telemetry = crate::telemetry::CallTelemetry::new(POLICY, name, events, &rt);
        Ok(ClientPolicies {
            live: Arc::new(Live {
                telemetry,
                stack: Swap::new(stack),
                reconfiguring: crate::sync::Mutex::default(),
            }),
        })
    }

    /// Each per-authority stage's settings, for a reconfiguration to retune the tables it
    /// keeps.
    pub(super) fn stages(&self) -> Stages {
        Stages {
            breaker: self.breaker.clone(),
            bulkhead: self.bulkhead.clone(),
            adaptive: self.adaptive.clone(),
            rate_limit: self.rate_limit.as_ref().map(|r| r.per_key().clone()),
            budget: match &self.budget {
                Stage::With(policy) => Some(Some(*policy)),
                Stage::Off => Some(None),
                Stage::Standard => None,
            },
        }
    }

    /// The stack these settings make, its tables new.
    pub(super) fn build_inner(self) -> Result<Inner<R>, ConfigError>
    where
        R: Clock,
    {
        if self.bulkhead.is_some() && self.adaptive.is_some() {
            return Err(ConfigError::Conflict {
                reason: "an authority's attempts in flight are limited by a bulkhead or an \
                         adaptive limit, not both: set bulkhead(None)",
            });
        }
        if self.max_authorities == 0 {
            return Err(ConfigError::Zero {
                field: "max_authorities",
            });
        }
        if let Some(deadline) = self.deadline {
            crate::time::positive_duration("deadline", deadline)?;
        }
        if let Some(timeout) = self.attempt_timeout {
            crate::time::positive_duration("attempt_timeout", timeout)?;
        }
        // Zero is allowed (no minimum); past u64 nanoseconds no deadline could ever hold them.
        for (field, value) in [
            ("max_retry_after", self.max_retry_after),
            ("min_attempt_time", self.min_attempt_time),
        ] {
            if u64::try_from(value.as_nanos()).is_err() {
                return Err(ConfigError::DurationOverflow { field });
            }
        }
        let retry = self.retry.resolve(|| standard_backoff().build())?;
        let backoff = match retry {
            Some(backoff) => backoff,
            None => Backoff::constant(Duration::from_millis(1))
                .max_attempts(1)
                .build()?,
        };
        let budget = self.budget.resolve(standard_budget)?;
        let budgets = match budget {
            Some(policy) => Some(Arc::new(Budgets::new(
                policy,
                self.max_authorities,
                self.rt.now(),
            )?)),
            None => None,
        };
        let breakers = match self.breaker {
            Some(breaker) => {
                let mut keyed = breaker
                    .name(&self.name)
                    .runtime(self.rt.clone())
                    .keyed()
                    .max_keys(self.max_authorities)
                    .key_label(|authority: &super::Authority| authority.to_string());
                if let Some(ttl) = self.idle_ttl {
                    keyed = keyed.idle_ttl(ttl);
                }
                Some(keyed.build()?)
            }
            None => None,
        };
        let bulkheads = match self.bulkhead {
            Some(bulkhead) => Some(
                bulkhead
                    .name(&self.name)
                    .runtime(self.rt.clone())
                    .keyed()
                    .max_keys(self.max_authorities)
                    .build()?,
            ),
            None => None,
        };
        let adaptive = match self.adaptive {
            Some(limit) => Some(
                limit
                    .name(&self.name)
                    .runtime(self.rt.clone())
                    .keyed()
                    .max_keys(self.max_authorities)
                    .build()?,
            ),
            None => None,
        };
        let limiters = match self.rate_limit {
            Some(limit) => Some(
                limit
                    .name(&self.name)
                    .runtime(self.rt.clone())
                    .max_keys(self.max_authorities)
                    .build()?,
            ),
            None => None,
        };
        Ok(Inner {
            rt: self.rt,
            deadline: self.deadline,
            attempt_timeout: self.attempt_timeout,
            min_attempt_time: self.min_attempt_time,
            backoff,
            retries: retry.is_some(),
            max_retry_after: self.max_retry_after,
            seed: self.seed,
            budgets,
            breakers,
            bulkheads,
            adaptive,
            limiters,
            max_authorities: self.max_authorities,
            classifier: self.classifier,
            idempotency: self.idempotency,
        })
    }
}

/// The standard retry budget: 20 % of an authority's calls plus 10 a second.
fn standard_budget() -> Result<RetryBudgetPolicy, ConfigError> {
    RetryBudgetPolicy::builder()
        .ratio(0.2)
        .min_per_second(10)
        .build()
}

/// A builder's per-authority stage settings, as the tables' `reconfigure` take them.
pub(super) struct Stages {
    pub(super) breaker: Option<CircuitBreakerBuilder>,
    pub(super) bulkhead: Option<BulkheadBuilder>,
    pub(super) adaptive: Option<AdaptiveLimiterBuilder<AnyAlgorithm>>,
    pub(super) rate_limit: Option<crate::rate::RateLimiterBuilder>,
    /// `None`: the standard budget.
    pub(super) budget: Option<Option<RetryBudgetPolicy>>,
}

impl Stages {
    /// The budget policy, resolved as `build` resolves it.
    pub(super) fn budget(&self) -> Result<Option<RetryBudgetPolicy>, ConfigError> {
        match self.budget {
            Some(policy) => Ok(policy),
            None => standard_budget().map(Some),
        }
    }
}

impl<R> std::fmt::Debug for ClientPoliciesBuilder<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientPoliciesBuilder")
            .field("name", &self.name)
            .field("deadline", &self.deadline)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("max_authorities", &self.max_authorities)
            .field("idle_ttl", &self.idle_ttl)
            .finish_non_exhaustive()
    }
}
