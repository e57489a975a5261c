//! What a limit does when Redis does not answer within its deadline.

/// What a limit does when Redis does not answer in time (or its breaker around Redis is
/// open).
///
/// ```
/// use tidewall_redis::WhenUnavailable;
///
/// // Each of 4 replicas allows a quarter of the global limit on its own.
/// let policy = WhenUnavailable::Local { share: 0.25 };
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum WhenUnavailable {
    /// Admit: availability over the limit.
    Open,
    /// Refuse with [`Rejected::BackendUnavailable`](tidewall::Rejected::BackendUnavailable):
    /// the limit over availability.
    Closed,
    /// Decide with an in-process limiter holding `share` (0 < share ≤ 1) of the global limit:
    /// with N replicas, `1 / N` keeps the total close to the global limit.
    Local {
        /// The fraction of the global limit this instance allows alone.
        share: f64,
    },
}
