//! Every Redis call goes through here: its own deadline, and a circuit breaker around Redis
//! itself, so a slow or dead Redis costs each decision at most its deadline (and nothing at
//! all while the breaker is open).

use std::future::Future;
use std::time::Duration;

use redis::RedisResult;
use tidewall::breaker::{CircuitBreaker, Outcome};
use tidewall::rt::Tokio;

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

/// The deadline and the breaker one limiter puts around its Redis calls.
#[derive(Debug)]
pub(crate) struct Backend {
    deadline: Duration,
    breaker: CircuitBreaker<Tokio>,
}

impl Backend {
    pub(crate) fn new(deadline: Duration) -> Result<Self, tidewall::ConfigError> {
        // Five failures in a row (timeouts included) open it for 500 ms, then one probe.
        let breaker = CircuitBreaker::builder()
            .name("redis")
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
    /// A zero `cap` (the caller's deadline passed before it asked) still gets the call,
    /// within the limit's own deadline as without a cap (an answer is the only way to decide
    /// at once), but anything other than an answer is [`Unavailable::CallerDeadline`]: past
    /// its deadline, the caller is not answered by the failure policy. The breaker records
    /// the call as without a cap.
    pub(crate) async fn call_within<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
        cap: Option<Duration>,
    ) -> Result<T, Unavailable> {
        let passed = cap.is_some_and(|cap| cap.is_zero());
        let answered = self.call_capped(call, cap.filter(|_| !passed)).await;
        match answered {
            Err(_) if passed => Err(Unavailable::CallerDeadline),
            answered => answered,
        }
    }

    /// [`call_within`](Self::call_within) for a cap that has not passed.
    async fn call_capped<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
        cap: Option<Duration>,
    ) -> Result<T, Unavailable> {
        let permit = self
            .breaker
            .try_acquire()
            .map_err(|_| Unavailable::BreakerOpen)?;
        let callers = cap.is_some_and(|cap| cap < self.deadline);
        let limit = cap.map_or(self.deadline, |cap| cap.min(self.deadline));
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
