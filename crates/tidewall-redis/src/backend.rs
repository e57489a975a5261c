//! Every Redis call goes through here: its own deadline, and (for every call a decision
//! waits on) a circuit breaker around Redis itself, so a slow or dead Redis costs each
//! decision at most its deadline (and nothing at all while the breaker is open). A held
//! lease's renewals go past the breaker (`call_past_breaker`): nobody waits on them.

use std::future::Future;
use std::time::{Duration, Instant};

use redis::RedisResult;
use tidewall::breaker::{CircuitBreaker, Outcome};
use tidewall::rt::{Clock as _, Tokio};

/// Why a Redis call gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// The deadline passed first.
    Timeout,
    /// The breaker around Redis is open: not even sent.
    BreakerOpen,
    /// Redis answered with an error, or the connection failed.
    Failed(String),
    /// The caller's own deadline (shorter than the limit's) passed first: nothing is known
    /// about Redis, and the caller is told [`Rejected::DeadlineExceeded`](tidewall::Rejected).
    CallerDeadline,
}

/// How long the one round trip of a caller whose deadline has already passed may take: a
/// healthy Redis on a local network answers within it.
pub(crate) const PASSED_CAP: Duration = Duration::from_millis(1);

/// What a wait must leave before the caller's deadline for the round trip after it: tokio's
/// timers wake up to a millisecond late, and a try at the deadline itself could not be
/// answered in time.
pub(crate) const LAST_TRY: Duration = Duration::from_millis(1);

/// The deadline and the breaker one limiter puts around its Redis calls.
#[derive(Debug)]
pub(crate) struct Backend {
    deadline: Duration,
    breaker: CircuitBreaker<Tokio>,
}

impl Backend {
    /// The backend of the `kind` of limit (`rate`, `bulkhead`, `quorum`) named `name`, whose
    /// breaker reports as `redis:<kind>:<name>`.
    pub(crate) fn new(
        deadline: Duration,
        kind: &str,
        name: &str,
    ) -> Result<Self, tidewall::ConfigError> {
        // Five failures in a row (timeouts included) open it for 500 ms, then one probe.
        let breaker = CircuitBreaker::builder()
            .name(format!("redis:{kind}:{name}"))
            .consecutive_failures(5)
            .break_duration(Duration::from_millis(500))
            .runtime(Tokio)
            .build()?;
        Ok(Self { deadline, breaker })
    }

    /// Runs `call` within the deadline, through the breaker.
    ///
    /// **Cancel safety:** dropping it abandons the call (its reply, if any, is discarded by
    /// the multiplexed connection) and records nothing.
    pub(crate) async fn call<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        self.call_within(call, None).await
    }

    /// The deadline of one Redis call.
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Like [`call`](Self::call), also cut short at `cap` (what is left of the caller's own
    /// deadline). A call cut short by `cap` before the limit's own deadline is
    /// [`Unavailable::CallerDeadline`] and counts nothing against Redis.
    ///
    /// A zero `cap` (the caller's deadline passed before it asked) still gets the call, cut
    /// short at [`PASSED_CAP`] (1 ms): a deadline that has passed gets one round trip of at
    /// most 1 ms, since a healthy Redis on a local network answers within it. Only that cut
    /// is relabelled: [`Unavailable::BreakerOpen`] (nothing was sent) and an error answer
    /// pass unchanged, and the caller, whose deadline has passed, answers them with
    /// [`Rejected::DeadlineExceeded`](tidewall::Rejected), never with the failure policy.
    pub(crate) async fn call_within<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
        cap: Option<Duration>,
    ) -> Result<T, Unavailable> {
        let cap = cap.map(|cap| if cap.is_zero() { PASSED_CAP } else { cap });
        let callers = cap.is_some_and(|cap| cap < self.deadline);
        let limit = cap.map_or(self.deadline, |cap| cap.min(self.deadline));
        self.timed(call, limit, callers).await
    }

    /// Like [`call`](Self::call), cut short at `end` instead of one deadline from now (a
    /// refill's own deadline, part of which it may have spent waiting for its turn). A cut is
    /// [`Unavailable::Timeout`] and counts against Redis, as the limit's own deadline does;
    /// an `end` already passed sends nothing and records nothing.
    pub(crate) async fn call_until<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
        end: Instant,
    ) -> Result<T, Unavailable> {
        let left = end.saturating_duration_since(Tokio.now());
        if left.is_zero() {
            return Err(Unavailable::Timeout);
        }
        self.timed(call, left.min(self.deadline), false).await
    }

    /// Like [`call`](Self::call), but sent even while the breaker is open, and recording
    /// nothing in it: for a held lease's renewal. The breaker spares callers a wait on a
    /// Redis that has been failing; nobody waits on a renewal, and one skipped while Redis
    /// answers again loses the lease (its slot then counts for another holder while this
    /// one still holds it).
    ///
    /// **Cancel safety:** as [`call`](Self::call).
    pub(crate) async fn call_past_breaker<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(Unavailable::Failed(error.to_string())),
            Err(_) => Err(Unavailable::Timeout),
        }
    }

    /// One call through the breaker, cut at `limit`: a cut is the caller's own
    /// ([`Unavailable::CallerDeadline`], recorded as nothing) when `callers`, else Redis's
    /// ([`Unavailable::Timeout`], a failure).
    async fn timed<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
        limit: Duration,
        callers: bool,
    ) -> Result<T, Unavailable> {
        let permit = self
            .breaker
            .try_acquire()
            .map_err(|_| Unavailable::BreakerOpen)?;
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(value)) => {
                permit.record(Outcome::Success);
                Ok(value)
            }
            Ok(Err(error)) => {
                permit.record(Outcome::Failure);
                Err(Unavailable::Failed(error.to_string()))
            }
            Err(_) if callers => {
                permit.record(Outcome::Ignored);
                Err(Unavailable::CallerDeadline)
            }
            Err(_) => {
                permit.record(Outcome::Failure);
                Err(Unavailable::Timeout)
            }
        }
    }
}
