//! Per-request changes to the client's policies.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::admission::Priority;

/// Changes to the [client policies](super::ClientPolicies) for one request. Put it in the
/// request's extensions (`http::Request::extensions_mut().insert(..)`, or reqwest-middleware's
/// `RequestBuilder::with_extension`); a request without one follows the policies as built.
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use tidewall::http::Overrides;
///
/// let mut request = http::Request::get("https://api.example/slow").body(()).unwrap();
/// request.extensions_mut().insert(
///     Overrides::new().deadline(Duration::from_secs(2)).max_attempts(NonZeroU32::MIN),
/// );
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct Overrides {
    pub(super) deadline: Option<Duration>,
    pub(super) attempt_timeout: Option<Duration>,
    pub(super) max_attempts: Option<NonZeroU32>,
    pub(super) no_retry: bool,
    pub(super) idempotent: bool,
    pub(super) priority: Priority,
}

impl Overrides {
    /// No change.
    pub const fn new() -> Self {
        Self {
            deadline: None,
            attempt_timeout: None,
            max_attempts: None,
            no_retry: false,
            idempotent: false,
            priority: Priority::Default,
        }
    }

    /// The whole request's deadline, attempts and waits together, instead of the client's.
    /// A duration too large to add to the clock's now (such as `Duration::MAX`) is about
    /// thirty years instead, as for [`Deadline::after`](crate::Deadline::after): in effect no
    /// deadline, never an overflow.
    pub const fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Each attempt's timeout, instead of the client's. Its timeouts count against the host
    /// (its breaker, its adaptive limit) as the client's do, so a timeout shorter than the
    /// host can answer in (zero: anything not answered at its first poll) teaches the host's
    /// shared state failures; to bound only this request's time, set its
    /// [`deadline`](Self::deadline), whose cut records nothing. A duration too large to add
    /// to the clock's now waits about thirty years, as [`Clock::sleep`](crate::rt::Clock::sleep)
    /// does.
    pub const fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// At most this many attempts, the first included (never more than the client allows).
    pub const fn max_attempts(mut self, attempts: NonZeroU32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Sends the request once: no retry.
    pub const fn no_retry(mut self) -> Self {
        self.no_retry = true;
        self
    }

    /// Treats the request as safe to send again whatever its method (a POST the server
    /// deduplicates by itself).
    pub const fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// The priority of the request's attempts in the host's
    /// [adaptive limit](super::ClientPoliciesBuilder::adaptive) (default
    /// [`Priority::Default`]): an attempt is admitted while fewer than its priority's share
    /// of the host's limit are in flight, so with the default shares
    /// [`Sheddable`](Priority::Sheddable) requests are refused once four-fifths of it are
    /// used, and [`Critical`](Priority::Critical) ones may use all of it. A queued attempt
    /// waits behind the more important ones. Without an adaptive limit it changes nothing
    /// (a bulkhead has no shares).
    ///
    /// ```
    /// use tidewall::admission::Priority;
    /// use tidewall::http::Overrides;
    ///
    /// let mut prefetch = http::Request::get("https://api.example/recommendations").body(()).unwrap();
    /// prefetch.extensions_mut().insert(Overrides::new().priority(Priority::Sheddable).no_retry());
    /// ```
    pub const fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
}
