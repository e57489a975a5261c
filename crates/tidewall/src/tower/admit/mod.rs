//! Any [`Admission`](crate::admission::Admission) as a tower layer: the rate limiter, the
//! bulkhead, or a stage kept elsewhere (a distributed limiter that decides after a round
//! trip), with one of three [`AdmitMode`]s.

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::AdmitLayer;
pub use service::AdmitService;

/// Where an [`AdmitLayer`] makes a call wait when its stage cannot admit it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdmitMode {
    /// Never: the response future fails at once with the stage's own rejection
    /// ([`Rejected::BulkheadFull`](crate::Rejected::BulkheadFull),
    /// [`Rejected::RateLimited`](crate::Rejected::RateLimited) with its `retry_after`), and
    /// `poll_ready` is the inner service's alone (load shedding: map it to 503 or 429). A
    /// stage that decides remotely still makes its round trip first.
    Reject,
    /// In `poll_ready`: the service is not ready until the stage admits, and the guard taken
    /// there (a bulkhead slot) is held until the call's response future completes
    /// (backpressure, as `tower::limit::ConcurrencyLimit`). Load balancers and buffers see a
    /// full stage as a service that is not ready. A wait the stage refuses (its `max_wait`,
    /// the layer's, a full queue) is never a `poll_ready` error, which tower takes to mean
    /// the service is broken for good (a `Buffer` would fail every later request): as
    /// `tower::load_shed` does, `poll_ready` then reports ready and the next call fails at
    /// once with the refusal, without calling the inner service. A call made without a ready
    /// `poll_ready` (a breach of tower's contract) is not waited for: it is refused with the
    /// stage's own reason if the stage cannot admit it at once. A caller that stops polling
    /// (a `ready()` given up) does not end the wait: the next `poll_ready`, however much
    /// later, continues it (its queue place kept, the layer's `max_wait` counted from the
    /// first `poll_ready` that waited).
    WaitReady,
    /// In the response future: `poll_ready` is the inner service's, and each call waits for
    /// admission on its own. The inner service is called only once admitted.
    WaitCall,
}
