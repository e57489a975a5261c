//! The per-request loop every HTTP client front runs.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use tidewall_core::backoff::Backoff;

use super::{ClientPolicies, Inner, Overrides};
use crate::admission::Priority;
use crate::breaker::{KeyedCircuitBreaker, Outcome, State};
use crate::classify::{Classify, Verdict, judge};
use crate::http::{Authority, FailureKind, HttpClassifier, HttpFailure, Inbound, Outbound};
use crate::retry::{Notify, Retry, RetryError, RetryEvent};
use crate::rt::Clock;
use crate::telemetry::{CallOutcome, CallTelemetry};
use crate::time::FutureExt as _;
use crate::{Deadline, Error, Rejected, RetryAfter};

impl<R: Clock> ClientPolicies<R> {
    /// Sends `request` through the policies: `send` makes one attempt with the request it is
    /// given (the original, or a copy for a retry). It is called only once the attempt is
    /// admitted, so a call to it is an attempt the server may see. A request that may be
    /// retried is copied ([`Outbound::try_clone`]) before each attempt but the last the
    /// schedule allows; one that may not is never copied.
    ///
    /// Per attempt, in order: the authority's breaker, its bulkhead or adaptive limit, and its
    /// rate limit (each waiting no longer than the deadline; the rate limit last, so that
    /// sends keep its pace), then `send` under the attempt timeout; the adaptive limit learns
    /// how it ended, as the breaker records it. A refusal by any of them ends the request at
    /// once with that refusal, not retried: an
    /// open breaker exists to answer fast. The breaker records the attempt's classified
    /// outcome and its `Retry-After`; an attempt the deadline cuts records nothing. A failure
    /// that leaves the authority's breaker open is not retried either (the retry would be
    /// refused): its response or error is the answer.
    ///
    /// **Cancel safety:** dropping the future drops the attempt in flight and every permit
    /// it holds; no policy records anything for that attempt, and the request's telemetry
    /// counts it `cancelled` (once polled). What the request already drew on the authority's
    /// retry budget stays drawn: its call, and a retry taken before the wait for it (a
    /// request dropped during that wait spent a retry it never made, as with every retry
    /// front, whose budget is drawn when a retry is decided).
    ///
    /// **Telemetry:** the request is reported once, however many attempts it made: to the
    /// [listener](super::ClientPoliciesBuilder::on_event), and with the `metrics` feature as
    /// `tidewall_calls_total{policy="http_client"}` by outcome, its retries and the retries
    /// its budget refused, and its duration (the table in [`telemetry`](crate::telemetry));
    /// with `tracing`, in a `tidewall.http` span.
    ///
    /// # Errors
    ///
    /// [`Error::Inner`] with the last attempt's error; [`Error::TimedOut`] when the last
    /// attempt timed out; [`Error::Rejected`] when a policy refused the last attempt, or
    /// with [`Rejected::DeadlineExceeded`] once the deadline has passed (but a response an
    /// earlier attempt got is kept: when the deadline cuts the attempt after it, in the
    /// stack's own waits, its attempt timeout or its send, that response is returned as
    /// `Ok`; only a rate-limit wait known at once to end past the deadline is refused at once,
    /// before the deadline, with `DeadlineExceeded`). A response is
    /// returned as `Ok` whatever its status once no retry is left. When a retry would wait
    /// past the deadline (the server's `Retry-After` ends after it), the answer comes at once:
    /// the latest response an attempt got (a 503 kept past a later error or timeout, as for
    /// the deadline's cut), else the last attempt's error. When the failure left the
    /// authority's breaker open, the last attempt's response or error is returned at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tidewall::http::{ClientPolicies, Overrides};
    /// use tidewall::Backoff;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), tidewall::ConfigError> {
    /// let policies = ClientPolicies::builder()
    ///     .retry(Backoff::constant(Duration::from_millis(10)).max_attempts(3).build()?)
    ///     .build()?;
    /// let request = http::Request::get("http://api.example/items").body(()).unwrap();
    /// let attempts = std::sync::atomic::AtomicU32::new(0);
    /// let response = policies
    ///     .run(request, Overrides::new(), |_request| {
    ///         let n = attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    ///         let status = if n < 3 { 503 } else { 200 };
    ///         async move {
    ///             Ok::<_, std::io::Error>(http::Response::builder().status(status).body(()).unwrap())
    ///         }
    ///     })
    ///     .await;
    /// assert_eq!(response.unwrap().status(), 200);
    /// assert_eq!(attempts.into_inner(), 3);
    /// # Ok(()) }
    /// ```
    pub async fn run<Q, T, E, S, Fut>(
        &self,
        request: Q,
        overrides: Overrides,
        send: S,
    ) -> Result<T, Error<E>>
    where
        Q: Outbound,
        T: Inbound,
        E: HttpFailure,
        S: Fn(Q) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let authority = request.authority();
        let inner = self.current();
        let telemetry = &self.live.telemetry;
        #[cfg(feature = "tracing")]
        let span = tracing::debug_span!(
            "tidewall.http",
            client = self.name(),
            method = %request.method(),
            authority = authority.as_ref().map(tracing::field::display),
        );
        // Reported once, however many attempts: how the request ended, and how long it took.
        let call = async {
            let key = authority.as_ref().map(Authority::as_str);
            let watch = telemetry.watch(&inner.rt, key);
            let result = inner
                .applied(telemetry, request, authority.as_ref(), overrides, send)
                .await;
            if let Some(watch) = watch {
                watch.finish(request_outcome(&inner.classifier, &result), &inner.rt);
            }
            result
        };
        #[cfg(feature = "tracing")]
        let call = tracing::Instrument::instrument(call, span);
        call.await
    }
}

impl<R: Clock> Inner<R> {
    /// The policies applied to one request.
    async fn applied<Q, T, E, S, Fut>(
        &self,
        telemetry: &CallTelemetry,
        request: Q,
        authority: Option<&Authority>,
        overrides: Overrides,
        send: S,
    ) -> Result<T, Error<E>>
    where
        Q: Outbound,
        T: Inbound,
        E: HttpFailure,
        S: Fn(Q) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let deadline = overrides
            .deadline
            .or(self.deadline)
            .map_or(Deadline::none(), |d| Deadline::after(&self.rt, d));
        let attempt_timeout = overrides.attempt_timeout.or(self.attempt_timeout);
        let wants_retry = self.retries
            && !overrides.no_retry
            && (overrides.idempotent
                || self
                    .idempotency
                    .may_replay(request.method(), request.headers()));
        let backoff = attempts_for(self, overrides);
        let max_attempts = backoff.max_attempts_total();
        // Cleared once no copy of the request is left to send: the judge then calls no
        // failure retryable, so the engine asks for no further attempt.
        let replayable = AtomicBool::new(wants_retry);
        let mut next = Some(request);
        let mut started = 0;
        let attempt = || {
            started += 1;
            telemetry.attempt(started);
            let request = next.take();
            if replayable.load(Relaxed) {
                // No copy for the last attempt the schedule allows: none could follow it
                // (its failure ends the request as the schedule's end would).
                next = (started < max_attempts)
                    .then(|| request.as_ref().and_then(Q::try_clone))
                    .flatten();
                if next.is_none() {
                    replayable.store(false, Relaxed);
                }
            }
            let attempt = Attempt {
                inner: self,
                authority,
                deadline,
                timeout: attempt_timeout,
                priority: overrides.priority,
            };
            attempt.run(request, &send)
        };
        let judge = Judge {
            classifier: &self.classifier,
            replayable: &replayable,
            breaker: self.breakers.as_ref().zip(authority),
        };
        let mut retry = Retry::new(backoff, attempt)
            .runtime(self.rt.clone())
            .classify(judge)
            .notify(Observe {
                telemetry,
                key: authority.map(Authority::as_str),
            })
            .deadline(deadline)
            .min_attempt_time(self.min_attempt_time)
            .max_retry_after(self.max_retry_after);
        if let Some(seed) = self.seed {
            retry = retry.seed(seed);
        }
        if wants_retry && let (Some(budgets), Some(authority)) = (&self.budgets, authority) {
            match budgets.get(authority, || self.rt.now()) {
                Some(budget) => retry = retry.budget(budget),
                // A full table of budgets in use: no budget to draw on, so no retry.
                None => replayable.store(false, Relaxed),
            }
        }
        match retry.await {
            Ok(response) => Ok(response),
            Err(RetryError::Inner(error)) => Err(error),
            // The deadline has not passed: only the wait for a retry would have ended past
            // it, so the last attempt's own error (an open breaker, say) is the answer, as a
            // response would be.
            Err(RetryError::DeadlineExceeded {
                last_error: Some(error),
                ..
            }) if !deadline.is_expired(self.rt.now()) => Err(error),
            Err(RetryError::AttemptTimedOut) => Err(Error::TimedOut),
            Err(_) => Err(Error::Rejected(Rejected::DeadlineExceeded)),
        }
    }
}

/// How a request ended, as its telemetry counts it: a refusal or a timeout as such, any other
/// answer by the classifier's verdict on it (a 503 that ran out of retries is a failure).
fn request_outcome<T: Inbound, E: HttpFailure>(
    classifier: &HttpClassifier,
    result: &Result<T, Error<E>>,
) -> CallOutcome {
    // A policy below the stack refused it (another middleware's limit or breaker): a
    // refusal, as a `PipelineLayer` counts one from below.
    if let Err(error @ Error::Inner(_)) = result
        && let FailureKind::Refused(why) = kind(error)
    {
        return CallOutcome::Rejected(why);
    }
    match result {
        Err(Error::Rejected(why)) => CallOutcome::Rejected(*why),
        Err(Error::TimedOut) => CallOutcome::TimedOut,
        _ => Standard(classifier)
            .classify(result.as_ref())
            .breaker_outcome()
            .into(),
    }
}

/// Tells the request's telemetry of its retries, and of those its budget refused, as the
/// retries of its authority.
struct Observe<'a> {
    telemetry: &'a CallTelemetry,
    key: Option<&'a str>,
}

impl<T, E> Notify<T, E> for Observe<'_> {
    fn notify(&mut self, event: &RetryEvent<'_, T, E>) {
        self.telemetry.retry(event.attempt, event.delay, self.key);
    }

    fn budget_spent(&mut self, _attempt: u32) {
        self.telemetry.budget_spent(self.key);
    }
}

/// The attempts this request may make: the client's backoff, capped by the override.
fn attempts_for<R>(inner: &Inner<R>, overrides: Overrides) -> Backoff {
    match overrides.max_attempts {
        Some(cap) => inner.backoff.cap_attempts(cap),
        None => inner.backoff,
    }
}

/// One attempt's setting.
struct Attempt<'a, R> {
    inner: &'a Inner<R>,
    authority: Option<&'a crate::http::Authority>,
    deadline: Deadline,
    timeout: Option<Duration>,
    /// Its priority in the authority's adaptive limit.
    priority: Priority,
}

impl<R: Clock> Attempt<'_, R> {
    /// The authority's breaker, bulkhead and limiter, then the send under the attempt
    /// timeout; the breaker records how it went.
    async fn run<Q, T, E, S, Fut>(self, request: Option<Q>, send: &S) -> Result<T, Error<E>>
    where
        T: Inbound,
        E: HttpFailure,
        S: Fn(Q) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let Self {
            inner,
            authority,
            deadline,
            timeout,
            priority,
        } = self;
        // Only an attempt after the last copy was spent has nothing to send, and the judge
        // allows no such attempt.
        let Some(request) = request else {
            return Err(Error::Rejected(Rejected::DeadlineExceeded));
        };
        let mut permit = match (&inner.breakers, authority) {
            (Some(breakers), Some(authority)) => {
                Some(breakers.try_acquire(authority).map_err(Error::Rejected)?)
            }
            _ => None,
        };
        let _slot = match (&inner.bulkheads, authority) {
            (Some(bulkheads), Some(authority)) => Some(
                taken_or_waited(
                    bulkheads.try_acquire_quiet(authority),
                    || bulkheads.acquire_before(authority, deadline),
                    deadline,
                    &inner.rt,
                )
                .await?,
            ),
            _ => None,
        };
        let mut slot = match (&inner.adaptive, authority) {
            (Some(limits), Some(authority)) => Some(
                taken_or_waited(
                    limits.try_acquire_quiet_as(authority, priority),
                    || limits.acquire_before_as(authority, deadline, priority),
                    deadline,
                    &inner.rt,
                )
                .await?,
            ),
            _ => None,
        };
        // The rate limit is waited for last, the slot held: the token is taken just before
        // the send, so sends keep its pace (taken before a queue, tokens of attempts that
        // then wait together would let them all go at once when slots free).
        if let (Some(limiters), Some(authority)) = (&inner.limiters, authority) {
            taken_or_waited(
                Ok(limiters.check_key_quiet(authority).ok()),
                || limiters.until_key_ready_before(authority, deadline),
                deadline,
                &inner.rt,
            )
            .await?;
        }
        // The host's time alone: not the waits for the stack's own queue and rate limit.
        if let Some(slot) = &mut slot {
            slot.start_now();
        }
        if let Some(permit) = &mut permit {
            permit.start_now();
        }
        let sending = send(request);
        let result = match timeout {
            Some(timeout) => match sending.timeout_on(&inner.rt, timeout).await {
                Ok(result) => result.map_err(Error::Inner),
                // A timeout at the deadline is the deadline cutting the attempt, which
                // records nothing (the permit and the slot go back untold).
                Err(_elapsed) if deadline.is_expired(inner.rt.now()) => {
                    return Err(refused(Rejected::DeadlineExceeded, deadline, &inner.rt).await);
                }
                Err(_elapsed) => Err(Error::TimedOut),
            },
            None => sending.await.map_err(Error::Inner),
        };
        if permit.is_some() || slot.is_some() {
            let (outcome, hint) = match &result {
                // A refusal by a policy below the stack (a layer or middleware under the
                // client) says nothing of the host's health: not counted, as a `BreakerLayer`
                // over the refusing layer does not count it.
                Err(error) if matches!(kind(error), FailureKind::Refused(_)) => {
                    (Outcome::Ignored, None)
                }
                _ => {
                    let (verdict, hint) = judge(&Standard(&inner.classifier), result.as_ref());
                    (verdict.breaker_outcome(), hint)
                }
            };
            if let Some(permit) = permit {
                permit.record_hinted(outcome, hint);
            }
            if let Some(slot) = slot {
                slot.finish(outcome);
            }
        }
        result
    }
}

/// What `taken` took at once (a refusal is the answer), else what `wait` waits for until the
/// deadline. The wait is boxed: it is the rare path, and inline it would triple the size of
/// every attempt's future, which is moved on every attempt.
async fn taken_or_waited<S, E, W, R: Clock>(
    taken: Result<Option<S>, Rejected>,
    wait: impl FnOnce() -> W,
    deadline: Deadline,
    rt: &R,
) -> Result<S, Error<E>>
where
    W: Future<Output = Result<S, Rejected>>,
{
    if let Some(taken) = taken.map_err(Error::Rejected)? {
        return Ok(taken);
    }
    match Box::pin(wait()).await {
        Ok(waited) => Ok(waited),
        Err(refusal) => Err(refused(refusal, deadline, rt).await),
    }
}

/// The error of an attempt one of the stack's own waits refused. A refusal because the
/// deadline has passed is the deadline's cut, and is left to the retry engine: the attempt
/// waits for the engine's deadline timer, due now, which ends the call as it ends any attempt
/// it cuts (an earlier attempt's response is kept). Any other refusal is the answer.
async fn refused<E, R: Clock>(refusal: Rejected, deadline: Deadline, rt: &R) -> Error<E> {
    if matches!(refusal, Rejected::DeadlineExceeded) && deadline.is_expired(rt.now()) {
        std::future::pending::<()>().await;
    }
    Error::Rejected(refusal)
}

/// The standard table over an attempt's result, whose error is a policy's or the client's.
struct Standard<'a>(&'a HttpClassifier);

fn kind<E: HttpFailure>(error: &Error<E>) -> FailureKind {
    match error {
        Error::Rejected(rejected) => FailureKind::Refused(*rejected),
        Error::TimedOut => FailureKind::Timeout,
        Error::Inner(error) => error.failure_kind(),
    }
}

impl<T: Inbound, E: HttpFailure> Classify<T, Error<E>> for Standard<'_> {
    fn classify(&self, result: Result<&T, &Error<E>>) -> Verdict {
        match result {
            Ok(response) => self.0.status_verdict(response.status()),
            Err(error) => self.0.failure_verdict(kind(error)),
        }
    }

    fn retry_after(&self, result: Result<&T, &Error<E>>) -> Option<Duration> {
        match result {
            Ok(response) => self.0.status_hint(response.status(), response.headers()),
            Err(error) => match kind(error) {
                FailureKind::Refused(rejected) => rejected.retry_after(),
                _ => None,
            },
        }
    }
}

/// The retry engine's classifier: the standard table, except that a refusal by the stack's
/// own per-authority policies is final (shedding exists to answer at once, and a retry would
/// only wait out the same refusal), that a failure which left the authority's breaker open is
/// final too (the next attempt would be refused: the caller gets the server's answer, not the
/// refusal), and that nothing is retryable once the request cannot be sent again.
struct Judge<'a, R> {
    classifier: &'a HttpClassifier,
    replayable: &'a AtomicBool,
    breaker: Option<(&'a KeyedCircuitBreaker<Authority, R>, &'a Authority)>,
}

impl<R: Clock> Judge<'_, R> {
    fn breaker_open(&self) -> bool {
        self.breaker.is_some_and(|(breakers, authority)| {
            matches!(
                breakers.state(authority),
                Some(State::Open | State::ForcedOpen)
            )
        })
    }
}

impl<T: Inbound, E: HttpFailure, R: Clock> Classify<T, Error<E>> for Judge<'_, R> {
    fn classify(&self, result: Result<&T, &Error<E>>) -> Verdict {
        match (result, Standard(self.classifier).classify(result)) {
            (Err(Error::Rejected(_)), _) => Verdict::Failure,
            (_, Verdict::RetryableFailure)
                if !self.replayable.load(Relaxed) || self.breaker_open() =>
            {
                Verdict::Failure
            }
            (_, verdict) => verdict,
        }
    }

    fn retry_after(&self, result: Result<&T, &Error<E>>) -> Option<Duration> {
        Standard(self.classifier).retry_after(result)
    }
}
