//! A timeout that covers readiness and the call with one budget.

mod future;
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::TimeoutLayer;
pub use service::TimeoutService;
