//! The refusal counter of an admission policy that lives outside this crate.

use super::PolicyTelemetry;
use crate::{Name, Rejected};

/// Reports the refusals of an admission policy built outside this crate (the Redis-backed
/// limits of `tidewall-redis`, or an [`Admission`](crate::admission::Admission) of your own)
/// in the series Tidewall's own policies report theirs in: with the `metrics` feature, the counter
/// `tidewall_rejections_total{policy, name, reason}` (`reason`: [`Rejected::kind`]); with
/// `tracing`, a debug event `call rejected` (target `tidewall::telemetry::policy`, fields
/// `policy`, `name`, `reason`, `retry_after`). Without either feature it reports nothing, and
/// [`refused`](Self::refused) costs a test of a constant. It tells no
/// [listener](crate::telemetry::Event): a policy of your own tells its own.
///
/// The counters of the `reasons` given to [`new`](Self::new) are registered then, so install
/// the recorder before building the policy; any other reason's counter registers on its first
/// refusal. Count each refusal where the policy gives its final answer: a wait that retries
/// internally and ends admitted is no refusal.
///
/// ```
/// use tidewall::Rejected;
/// use tidewall::telemetry::Refusals;
///
/// // A quota policy of your own, counted beside Tidewall's bulkheads and rate limiters.
/// let refusals = Refusals::new("quota", "tenant_api", &[Rejected::BulkheadFull]);
/// let answer: Result<(), Rejected> = Err(Rejected::BulkheadFull);
/// if let Err(rejected) = &answer {
///     refusals.refused(rejected);
/// }
/// // Or on the way out: the answer passes through, its refusal (if any) counted.
/// let answer: Result<u32, Rejected> = refusals.counted(Ok(7));
/// assert_eq!(answer, Ok(7));
/// assert_eq!(refusals.policy(), "quota");
/// assert_eq!(refusals.name(), "tenant_api");
/// ```
pub struct Refusals(PolicyTelemetry);

impl Refusals {
    /// The refusals of the policy of kind `policy` (the `policy` label: `redis_rate`, say)
    /// named `name` (the `name` label), which refuses with the `reasons` given (one example
    /// value of each kind; their counters are registered now).
    pub fn new(policy: &'static str, name: impl Into<Name>, reasons: &[Rejected]) -> Self {
        Self(PolicyTelemetry::new(policy, &name.into(), reasons))
    }

    /// Counts one refusal for `reason`, and sends its tracing event.
    #[inline]
    pub fn refused(&self, reason: &Rejected) {
        self.0.refused(reason, None);
    }

    /// `answer`, its refusal counted (as [`refused`](Self::refused)) if it is one.
    ///
    /// # Errors
    ///
    /// `answer`'s refusal, unchanged.
    #[inline]
    pub fn counted<T>(&self, answer: Result<T, Rejected>) -> Result<T, Rejected> {
        answer.inspect_err(|reason| self.refused(reason))
    }

    /// The `policy` label.
    pub fn policy(&self) -> &'static str {
        self.0.policy()
    }

    /// The `name` label.
    pub fn name(&self) -> &str {
        self.0.name.as_str()
    }
}

impl std::fmt::Debug for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusals")
            .field("policy", &self.policy())
            .field("name", &self.name())
            .finish()
    }
}
