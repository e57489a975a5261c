//! Circuit breaker as a tower layer: reject while open, or hold callers in `poll_ready`
//! until the breaker admits.

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::BreakerLayer;
pub use service::BreakerService;
