//! What a limit does when Redis does not answer within its deadline, or fails.

/// What a limit does when Redis does not answer in time, answers with an error (`OOM`,
/// `NOPERM`, `READONLY`, ...), or its breaker around Redis is open.
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
    /// with N replicas, `1 / N` keeps the total close to the global limit over time (not at
    /// every moment: see below).
    ///
    /// For a rate limiter, `share` of the rate and of the burst (rounded down, at least one
    /// cell of each); it refuses with [`Rejected::RateLimited`](tidewall::Rejected::RateLimited)
    /// and its own wait. A request for more cells than the share's burst but no more than the
    /// limit's is judged as a rate, not refused for good: admitted once the share is fully
    /// rested, and paid for at its rate, less the share's burst: after a request of `n` cells
    /// over a share burst of `b`, the next cell waits `n − b + 1` of the share's intervals.
    /// So for a moment a replica may admit up to the limit's burst, and N rested replicas up
    /// to N times it, where `1 / N` of the burst each would keep them within it. For a
    /// bulkhead, `share` of the slots.
    Local {
        /// The fraction of the global limit this instance allows alone.
        share: f64,
    },
}
