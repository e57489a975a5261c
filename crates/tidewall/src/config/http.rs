//! An instance as an HTTP client (feature `http`): the outbound stack made from its sections,
//! by name in the registry, following reloads.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};

use super::instance::{Checking, Get, checked};
use super::sections::{ClientErrors, HttpConfig};
use super::{Config, Instance, Invalid, Policies, Problem, Registry, Toggle, key};
use crate::Name;
use crate::classify::Verdict;
use crate::http::{ClientPolicies, ClientPoliciesBuilder, HttpClassifier, Idempotency};
use crate::rt::{Clock, DefaultRuntime};
use crate::sync::Mutex;
use crate::telemetry::Listener;

/// The clients a registry holds, by name.
pub(super) type Clients<R> = Mutex<BTreeMap<Name, ClientPolicies<R>>>;

/// A held client and the reconfiguration a reload gives it.
pub(super) type Plan<R> = (Name, ClientReload<R>);

/// A client's settings under a reload's new configuration, checked against its stack when
/// the reload was planned. Applied on the stack in force when it is applied: worked out again
/// under the client's own turn to be reconfigured, so that a reconfiguration from code
/// meanwhile is built on, not undone in part. Nothing but that turn is held meanwhile (not
/// the registry's maps, nor another client's), so a listener told of either may look the
/// registry up.
pub(super) struct ClientReload<R> {
    client: ClientPolicies<R>,
    settings: ClientPoliciesBuilder<()>,
}

impl<R: Clock> ClientReload<R> {
    /// Reconfigures the client; `None` if the stack a reconfiguration from code left
    /// meanwhile cannot take the settings (it changed a bound the reload's check read).
    pub(super) fn apply(self) -> Option<crate::http::Retuned> {
        let _turn = self.client.reconfiguring().ok()?;
        Some(self.client.plan(self.settings).ok()?.apply())
    }
}

/// The most authorities a client tracks when `[keys]` does not say.
const MAX_AUTHORITIES: usize = 10_000;
/// How long a client keeps an idle authority's breaker when `[keys]` does not say.
const IDLE_TTL: Duration = Duration::from_secs(60);

impl Instance<'_> {
    /// The instance as an HTTP client's stack, on the default runtime: each stage there when
    /// the instance or its base has the section, per authority (scheme, host and port).
    ///
    /// | from | becomes |
    /// |---|---|
    /// | `deadline`, `attempt_timeout` | the whole request's deadline and each attempt's timeout (none when no layer sets them) |
    /// | `min_attempt_time` | the least time left before the deadline for an attempt or a retry's sleep to start ([`ClientPoliciesBuilder::min_attempt_time`]) |
    /// | `[retry]` | the retry schedule and its `max_retry_after`; no section, no retry |
    /// | `[budget]` | a retry budget per authority |
    /// | `[breaker]`, `[bulkhead]`, `[adaptive]`, `[rate_limit]` | a breaker, bulkhead, adaptive limit, rate limit per authority |
    /// | `[keys]` | `max_keys`: the most authorities each table tracks (default 10,000); `idle_ttl`: how long a closed breaker with failures is kept (default 60 s) |
    /// | `[http]` | the statuses retried or failed besides the standard table, the verdict on other 4xx, the methods sent again and the idempotency key's header ([`HttpConfig`]) |
    ///
    /// What a file cannot say (a classifier of your own, a listener) can be added to the
    /// builder before [`build`](ClientPoliciesBuilder::build).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::config::Config;
    ///
    /// let config = Config::from_toml(r#"
    ///     [instances.catalog]
    ///     deadline = "5s"
    ///     attempt_timeout = "1s"
    ///     [instances.catalog.retry]
    ///     max_attempts = 3
    ///     [instances.catalog.breaker]
    ///     consecutive_failures = 5
    ///     [instances.catalog.http]
    ///     retry_statuses = [521]
    /// "#)?;
    /// let policies = config.instance("catalog")?.http_client()?.build()?;
    /// assert!(policies.breakers().is_some() && policies.bulkheads().is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Invalid`] with the key path of the first setting refused: a section's; an `[http]`
    /// status that is not an error status (400 to 999), a method that is not one or is not
    /// spelled in capitals, or an `idempotency_key_header` that is not a header name
    /// ([`Problem::Malformed`]); a status in both lists
    /// ([`Problem::NotHere`]).
    pub fn http_client(&self) -> Result<ClientPoliciesBuilder, Invalid> {
        self.http_client_on(DefaultRuntime::default(), None)
    }

    /// As [`http_client`](Self::http_client), on `rt`, every policy telling `listener`.
    pub(super) fn http_client_on<R: Clone>(
        &self,
        rt: R,
        listener: Option<&Listener>,
    ) -> Result<ClientPoliciesBuilder<R>, Invalid> {
        let has = |section: fn(&Policies) -> bool| self.has(section);
        let told = |listener: &Listener| {
            let listener = listener.clone();
            move |event: &crate::telemetry::Event<'_>| listener.forward(event)
        };
        let stage_rt = DefaultRuntime::default;
        let mut b = ClientPolicies::builder()
            .runtime(rt)
            .name(self.named())
            .deadline(self.deadline())
            .attempt_timeout(self.attempt_timeout())
            .min_attempt_time(self.min_attempt_time())
            .max_retry_after(self.max_retry_after());
        if let Some(seed) = self.retry_seed() {
            b = b.seed(seed);
        }
        b = if has(|p| p.retry.is_some()) {
            b.retry(self.backoff()?)
        } else {
            b.no_retry()
        };
        let budget = has(|p| p.budget.is_some()).then(|| self.retry_budget());
        b = b.retry_budget(budget.transpose()?);
        let breaker = has(|p| p.breaker.is_some()).then(|| self.breaker_on(stage_rt()));
        let mut breaker = breaker.transpose()?;
        let bulkhead = has(|p| p.bulkhead.is_some()).then(|| self.bulkhead_on(stage_rt()));
        let mut bulkhead = bulkhead.transpose()?;
        let adaptive = has(|p| p.adaptive.is_some()).then(|| self.adaptive_limiter_on(stage_rt()));
        let mut adaptive = adaptive.transpose()?;
        let rate = has(|p| p.rate_limit.is_some()).then(|| self.rate_limiter_on(stage_rt()));
        let mut rate = rate.transpose()?;
        if let Some(listener) = listener {
            breaker = breaker.map(|s| s.on_event(told(listener)));
            bulkhead = bulkhead.map(|s| s.on_event(told(listener)));
            adaptive = adaptive.map(|s| s.on_event(told(listener)));
            rate = rate.map(|s| s.on_event(told(listener)));
            b = b.on_event(told(listener));
        }
        let keys = self.keys()?;
        b = b
            .breaker(breaker)
            .bulkhead(bulkhead)
            .adaptive(adaptive)
            .rate_limit(rate.map(crate::rate::RateLimiterBuilder::keyed))
            .max_authorities(keys.max_keys.unwrap_or(MAX_AUTHORITIES))
            .idle_ttl(keys.idle_ttl.unwrap_or(IDLE_TTL));
        let (classifier, idempotency) = self.http_rules()?;
        b = b.classifier(classifier).idempotency(idempotency);
        // Every part was checked where it is written; the whole is checked for what only it
        // can refuse, without registering a metric series.
        checked(|| {
            b.clone()
                .runtime(Checking(std::time::Instant::now()))
                .build()
        })
        .map_err(|e| Invalid::new(format!("instances.{}", key(self.name())), Problem::Rule(e)))?;
        Ok(b)
    }

    /// The classifier and idempotency `[http]` makes.
    pub(super) fn http_rules(&self) -> Result<(HttpClassifier, Idempotency), Invalid> {
        let get: Get<HttpConfig> = |p| &p.http;
        let (s, at) = self.section("http", get, HttpConfig::over);
        let path = |key: &str| self.key_path("http", get, HttpConfig::sets, key, &at);
        let statuses = |key: &str, codes: &[u16]| {
            codes
                .iter()
                .map(|&code| {
                    // A success or a redirect read as a failure would fail every call.
                    let status = StatusCode::from_u16(code).ok().filter(|_| code >= 400);
                    status.ok_or_else(|| {
                        let what = format!("{code} is not an error status (400 to 999)");
                        Invalid::new(path(key), Problem::Malformed(what))
                    })
                })
                .collect::<Result<Vec<_>, Invalid>>()
        };
        let retry = statuses(
            "retry_statuses",
            s.retry_statuses.as_deref().unwrap_or_default(),
        )?;
        let fail = statuses(
            "fail_statuses",
            s.fail_statuses.as_deref().unwrap_or_default(),
        )?;
        if retry.iter().any(|code| fail.contains(code)) {
            return Err(Invalid::new(
                path("fail_statuses"),
                Problem::NotHere("a status is retried or failed, not both"),
            ));
        }
        let client_errors = match s.client_errors {
            None | Some(ClientErrors::Success) => Verdict::Success,
            Some(ClientErrors::Ignored) => Verdict::Ignored,
            Some(ClientErrors::Failure) => Verdict::Failure,
            Some(ClientErrors::RetryableFailure) => Verdict::RetryableFailure,
        };
        let classifier = HttpClassifier::standard()
            .retry_status(retry)
            .fail_status(fail)
            .client_errors(client_errors);
        let mut idempotency = Idempotency::standard();
        if let Some(header) = &s.idempotency_key_header {
            let header = match header {
                Toggle::Off => None,
                Toggle::On(name) => {
                    Some(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        let what = format!("{name:?} is not a header name");
                        Invalid::new(path("idempotency_key_header"), Problem::Malformed(what))
                    })?)
                }
            };
            idempotency = idempotency.key_header(header);
        }
        for method in s.replay_methods.as_deref().unwrap_or_default() {
            // Methods are case-sensitive: "post" would be a method of its own, never POST.
            let spelled = method.bytes().any(|b| b.is_ascii_lowercase());
            let parsed = Method::from_bytes(method.as_bytes())
                .ok()
                .filter(|_| !spelled)
                .ok_or_else(|| {
                    let what = if spelled {
                        format!(
                            "{method:?}: methods are case-sensitive, write {:?}",
                            method.to_ascii_uppercase()
                        )
                    } else {
                        format!("{method:?} is not an HTTP method")
                    };
                    Invalid::new(path("replay_methods"), Problem::Malformed(what))
                })?;
            idempotency = idempotency.allow(parsed);
        }
        Ok((classifier, idempotency))
    }
}

impl<R: Clock> Registry<R> {
    /// The HTTP client of `name`, made on first use from the configuration in force (see
    /// [`Instance::http_client`] for what each section becomes): hand it to
    /// `tidewall_reqwest::Resilience::new` or [`ClientLayer`](crate::tower::http::ClientLayer).
    /// Its per-authority tables are its own (not the registry's keyed tables); the
    /// registry's listener hears its requests and its policies.
    ///
    /// Every clone follows reloads: a [reload](Self::reload) applies the new settings with
    /// [`ClientPolicies::reconfigure`] (a request in flight keeps the deadline, timeouts and
    /// retry schedule it started with; each per-authority table is retuned in place, what it
    /// holds kept; a section added or removed adds or removes the stage), and refuses a
    /// change of the tables' bounds with [`Problem::Fixed`]: `[keys] max_keys`, and
    /// `idle_ttl` while the client has breakers. A reload that removes `[http]` keeps the
    /// client (still reconfigured by each reload), and builds the plain policies of the
    /// instance's sections as for any instance; those stay held like any policy the registry
    /// made, so later files must still let them be built (a `[bulkhead]` with its
    /// `max_concurrent`, say), `[http]` back or not. A name the file does not declare is
    /// refused (a misspelt name would get a client of no stage), and so is a reload that
    /// removes a held client's instance ([`Problem::Removed`]): its requests would lose every
    /// stage.
    ///
    /// ```
    /// use tidewall::config::{Config, Registry};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let registry = Registry::new(Config::from_toml(r#"
    ///     [instances.outbound]
    ///     deadline = "10s"
    ///     http = {}
    ///     [instances.outbound.breaker]
    ///     consecutive_failures = 5
    /// "#)?)?;
    /// let outbound = registry.http_client("outbound")?;
    /// assert_eq!(registry.http_clients().len(), 1, "declared with [http]: built up front");
    ///
    /// registry.reload(Config::from_toml(r#"
    ///     [instances.outbound]
    ///     deadline = "10s"
    ///     http = {}
    ///     [instances.outbound.breaker]
    ///     consecutive_failures = 2
    ///     [instances.outbound.retry]
    ///     max_attempts = 3
    /// "#)?)?;
    /// assert!(outbound.breakers().is_some());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Instance::http_client`]; [`Problem::Undeclared`] for a name the file does not
    /// declare (never [`Problem::Full`]: every declared instance has its place).
    pub fn http_client(&self, name: &str) -> Result<ClientPolicies<R>, Invalid> {
        self.held_or_made_declared(&self.clients, name, |config| {
            let instance = config.instance(name)?;
            let builder = instance.http_client_on(self.runtime().clone(), self.events.as_ref())?;
            builder
                .build()
                .map_err(|e| Invalid::new(format!("instances.{}", key(name)), Problem::Rule(e)))
        })
    }

    /// Every HTTP client got so far, by name.
    pub fn http_clients(&self) -> Vec<(Name, ClientPolicies<R>)> {
        super::registry::listed(&self.clients)
    }
}

/// What `config` gives each client in `clients`, checked whole: nothing is applied.
pub(super) fn plans<R: Clock>(
    clients: &BTreeMap<Name, ClientPolicies<R>>,
    config: &Config,
    listener: Option<&Listener>,
) -> Result<Vec<Plan<R>>, Invalid> {
    clients
        .iter()
        .map(|(name, client)| {
            let instance = config.instance(name)?;
            let keys = instance.keys()?;
            let fixed = |key_name: &str| {
                Invalid::new(
                    format!("instances.{}.keys.{key_name}", key(name)),
                    Problem::Fixed,
                )
            };
            if keys.max_keys.unwrap_or(MAX_AUTHORITIES) != client.max_authorities() {
                return Err(fixed("max_keys"));
            }
            let ttl = keys.idle_ttl.unwrap_or(IDLE_TTL);
            if client.breakers().is_some_and(|b| b.idle_ttl() != ttl) {
                return Err(fixed("idle_ttl"));
            }
            // A reload from a listener of this client's reconfiguration would wait for it.
            if client.reconfiguring_here() {
                return Err(Invalid::new("", Problem::Reentrant));
            }
            let settings = instance.http_client_on((), listener)?;
            checked(|| client.plan(settings.clone()).map(drop))
                .map_err(|e| Invalid::new(format!("instances.{}", key(name)), Problem::Rule(e)))?;
            let client = client.clone();
            Ok((name.clone(), ClientReload { client, settings }))
        })
        .collect()
}
